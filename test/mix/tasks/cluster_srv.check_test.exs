defmodule Mix.Tasks.ClusterSrv.CheckTest do
  # `mix cluster_srv.check` against a real BIND, one mistake at a time.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  @moduletag :integration

  alias ClusterSRV.Harness.{DNS, Zone}
  alias Mix.Tasks.ClusterSrv.Check

  @statefulset Zone.service("myapp-headless", "default",
                 pods: for(i <- 0..2, do: {"myapp-#{i}", {127, 0, 0, 10 + i}})
               )
  @dashed Zone.service("plain-headless", "default",
            target: :ip,
            pods: [{"a", {10, 1, 0, 95}}, {"b", {10, 1, 0, 96}}]
          )

  @extra [
    # A service that is not headless: DNS lists the service itself.
    {"web.default.svc.cluster.local.", :srv, {0, 100, 80, "web.default.svc.cluster.local."}},
    {"web.default.svc.cluster.local.", :a, {10, 96, 0, 20}},
    # Targets outside the service's domain beside a valid one.
    {"odd.default.svc.cluster.local.", :srv,
     {0, 50, 4370, "odd-0.odd.default.svc.cluster.local."}},
    {"odd.default.svc.cluster.local.", :srv, {0, 50, 4370, "evil.example.com."}}
  ]

  setup_all do
    dns = DNS.start!(services: [@statefulset, @dashed], extra: @extra)
    on_exit(fn -> DNS.stop(dns) end)
    %{dns: dns}
  end

  defp check(dns, args) do
    args = args ++ ["--nameserver", DNS.nameserver(dns), "--timeout", "1000"]
    parent = self()

    output =
      capture_io(fn ->
        capture_io(:stderr, fn ->
          status =
            try do
              Check.run(args)
              0
            catch
              :exit, {:shutdown, code} -> code
            end

          send(parent, {:status, status})
        end)
        |> IO.write()
      end)

    assert_received {:status, status}
    {status, output}
  end

  defp live(args) do
    parent = self()

    output =
      capture_io(fn ->
        status =
          try do
            Check.run(["--live" | args])
            0
          catch
            :exit, {:shutdown, code} -> code
          end

        send(parent, {:status, status})
      end)

    assert_received {:status, status}
    {status, output}
  end

  describe "--live" do
    test "prints what the running strategy knows", %{dns: dns} do
      probe = ClusterSRV.Harness.Probe.start!()
      topology = :"live_#{System.unique_integer([:positive])}"

      state = %Cluster.Strategy.State{
        topology: topology,
        connect: ClusterSRV.Harness.Probe.mfa(probe, :connect),
        disconnect: ClusterSRV.Harness.Probe.mfa(probe, :disconnect),
        list_nodes: ClusterSRV.Harness.Probe.mfa(probe, :list_nodes),
        config: [
          service: "myapp-headless",
          namespace: "default",
          application_name: "myapp",
          cluster_domain: "cluster.local.",
          nameservers: [DNS.nameserver(dns)]
        ]
      }

      ExUnit.CaptureLog.capture_log(fn ->
        {:ok, _pid} = ClusterSRV.Strategy.start_link([state])
        for _ <- 1..3, do: assert_receive({:probe, :connect, _, _}, 2_000)
        Process.sleep(50)
      end)

      {status, output} = live(["--topology", Atom.to_string(topology)])
      assert status == 0
      assert output =~ "Topology #{inspect(topology)}"
      assert output =~ "query: myapp-headless.default.svc.cluster.local."
      assert output =~ ~r/last lookup: \S+: ok \(\d+ µs\)/
      assert output =~ "listed (3): :\"myapp@myapp-0.myapp-headless.default.svc.cluster.local\""
      assert output =~ "connected (3)"
      assert output =~ "unreachable (0): -"
    end

    test "with no strategy running, exits 1 and says so" do
      {status, output} = live(["--topology", "nothing_here"])
      assert status == 1
      assert output =~ "no ClusterSRV strategy of topology nothing_here runs on"
    end
  end

  test "a StatefulSet's service: records, node names, exit 0", %{dns: dns} do
    {status, output} =
      check(dns, ~w(--service myapp-headless --namespace default --application-name myapp))

    assert status == 0
    assert output =~ "myapp-headless.default.svc.cluster.local. (SRV)"

    assert output =~
             ~r/0\s+33\s+4370\s+myapp-0\.myapp-headless\.default\.svc\.cluster\.local\s+5\s+127\.0\.0\.10/

    assert output =~ ~s(:"myapp@myapp-2.myapp-headless.default.svc.cluster.local")
    assert output =~ "OK: 3 node name(s)"
    # The test VM is not distributed, and the check says so.
    assert output =~ "✗ not distributed"
  end

  test "dashed-IP targets bring the endpoint_pod_names and node_naming: :ip hint", %{dns: dns} do
    {_status, output} =
      check(dns, ~w(--service plain-headless --namespace default --application-name app))

    assert output =~ "dashed IPs"
    assert output =~ "endpoint_pod_names"
    assert output =~ "node_naming: :ip"

    # With node_naming: :ip the same answer is fine, and the hint goes away.
    {0, output} =
      check(
        dns,
        ~w(--service plain-headless --namespace default --application-name app --node-naming ip)
      )

    assert output =~ ~s(:"app@10.1.0.95")
    refute output =~ "dashed IPs"
  end

  test "NXDOMAIN lists the likely causes and exits non-zero", %{dns: dns} do
    {status, output} =
      check(dns, ~w(--service missing --namespace default --application-name app))

    assert status == 1
    assert output =~ "the name does not exist (NXDOMAIN)"
    assert output =~ "a wrong service or namespace"
    assert output =~ "publishNotReadyAddresses: true"
    assert output =~ "a service without ports"
  end

  test "a _port._proto name the service does not have points at the named port", %{dns: dns} do
    {1, output} =
      check(
        dns,
        ~w(--service myapp-headless --namespace default --application-name myapp --port-name http)
      )

    assert output =~ "_http._tcp.myapp-headless.default.svc.cluster.local."
    assert output =~ "the service has no port with that name"
  end

  test "a service that is not headless is named for what it is", %{dns: dns} do
    {status, output} = check(dns, ~w(--service web --namespace default --application-name web))
    assert status == 1
    assert output =~ ~s("web.default.svc.cluster.local": the target is the service itself)
    assert output =~ "clusterIP: None"
  end

  test "targets outside the service's domain are flagged", %{dns: dns} do
    {0, output} = check(dns, ~w(--service odd --namespace default --application-name odd))

    assert output =~
             ~s("evil.example.com": not under the service's domain odd.default.svc.cluster.local)

    assert output =~ "1 target(s) lie outside odd.default.svc.cluster.local"
  end

  test "a missing required flag is a usage error", %{dns: dns} do
    for {args, message} <- [
          {~w(--service s --namespace n), "--application-name is required"},
          {~w(--service s --application-name a), "--service and --namespace are required"},
          {~w(--service s --namespace n --application-name a --node-naming fqdn),
           "invalid value for :node_naming"}
        ] do
      {status, output} = check(dns, args)
      assert status == 2, inspect(args)
      assert output =~ message
      assert output =~ "usage: mix cluster_srv.check"
    end
  end

  describe "on a distributed node" do
    # The check run by `mix` in a VM of its own, named as a pod would be.
    defp check_as(dns, erl_flags, name_flags) do
      dir = ClusterSRV.Harness.Watchdog.tmp_dir("cluster_srv_check")
      inetrc = DNS.write_inetrc!(dns, Path.join(dir, "inetrc"))

      port = DNS.free_port()

      args =
        name_flags ++
          [
            "--erl",
            "-start_epmd false -erl_epmd_port #{port} " <> erl_flags,
            "-S",
            "mix",
            "cluster_srv.check"
          ] ++
          ~w(--service myapp-headless --namespace default --application-name myapp --nameserver) ++
          [DNS.nameserver(dns)]

      {output, _status} =
        System.cmd("elixir", args,
          cd: File.cwd!(),
          env: [{"MIX_ENV", "test"}, {"ERL_INETRC", inetrc}],
          stderr_to_stdout: true
        )

      File.rm_rf(dir)
      output
    end

    test "a node named as DNS lists it passes", %{dns: dns} do
      output =
        check_as(dns, "-kernel inet_dist_use_interface {127,0,0,10}", [
          "--name",
          "myapp@myapp-0.myapp-headless.default.svc.cluster.local"
        ])

      assert output =~ "its name is among the node names", output
    end

    test "a node named otherwise is told what the others will dial", %{dns: dns} do
      output =
        check_as(dns, "-kernel inet_dist_use_interface {127,0,0,11}", [
          "--name",
          "myapp@127.0.0.11"
        ])

      assert output =~ "✗ its name is not among the node names", output

      assert output =~
               ~s(the other nodes will dial "myapp@myapp-1.myapp-headless.default.svc.cluster.local")

      assert output =~ "RELEASE_NODE="
    end

    test "a node with short names is told to use long names", %{dns: dns} do
      output = check_as(dns, "", ["--sname", "myapp"])
      assert output =~ "uses short names", output
    end
  end
end
