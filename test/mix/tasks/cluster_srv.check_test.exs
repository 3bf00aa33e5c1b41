defmodule Mix.Tasks.ClusterSrv.CheckTest do
  # `mix cluster_srv.check` against a real BIND, one mistake at a time. The test VM is not
  # distributed; the cases that need a node name run `mix` in a VM of its own, named as a pod
  # would be, and read its exit status.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  @moduletag :integration

  alias ClusterSRV.Harness.{DNS, Probe, Zone}
  alias Mix.Tasks.ClusterSrv.Check

  @statefulset Zone.service("myapp-headless", "default",
                 pods: for(i <- 0..2, do: {"myapp-#{i}", {127, 0, 0, 10 + i}})
               )
  @dashed Zone.service("plain-headless", "default",
            target: :ip,
            pods: [{"a", {10, 1, 0, 95}}, {"b", {10, 1, 0, 96}}]
          )
  # Dashed-IP targets of addresses this host can give a node.
  @dashed_local Zone.service("dash-headless", "default",
                  target: :ip,
                  pods: [{"a", {127, 0, 0, 31}}, {"b", {127, 0, 0, 32}}]
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

  # Names as dns_cluster asks them: web.internal has A, AAAA and SRV records; web-3's address
  # is listed only by the SRV record's target; web-1.internal is a node's host name.
  @internal [
    "update add web.internal. 5 IN A 127.0.0.21",
    "update add web.internal. 5 IN A 127.0.0.22",
    "update add web.internal. 5 IN AAAA fd00::21",
    "update add web.internal. 5 IN AAAA fd00::22",
    "update add web.internal. 5 IN SRV 0 50 4370 web-3.internal.",
    "update add web-3.internal. 5 IN A 127.0.0.23",
    "update add web-1.internal. 5 IN A 127.0.0.21",
    "update add worker.internal. 5 IN A 127.0.0.25",
    "update add v4only.internal. 5 IN A 127.0.0.26"
  ]

  setup_all do
    dns = DNS.start!(services: [@statefulset, @dashed, @dashed_local], extra: @extra)
    DNS.update!(dns, @internal, "internal")
    on_exit(fn -> DNS.stop(dns) end)
    %{dns: dns}
  end

  # The task run in this VM; its status read from the exit it ends with.
  defp check(dns, args) do
    run(args ++ ["--nameserver", DNS.nameserver(dns), "--timeout", "1000"])
  end

  defp run(args) do
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

  # The task run by `mix` in an OS process of its own: `name_flags` and `erl_flags` make it a
  # distributed node (none: a plain `mix`). Its resolver settings point at this BIND, so that
  # it can resolve its own host name.
  defp mix_check(dns, args, name_flags \\ [], erl_flags \\ "") do
    dir = ClusterSRV.Harness.Watchdog.tmp_dir("cluster_srv_check")
    inetrc = DNS.write_inetrc!(dns, Path.join(dir, "inetrc"))
    port = DNS.free_port()
    check_args = ["cluster_srv.check" | args] ++ ["--nameserver", DNS.nameserver(dns)]

    {executable, args} =
      if name_flags == [] do
        {"mix", check_args}
      else
        {"elixir",
         name_flags ++
           [
             "--erl",
             "-start_epmd false -erl_epmd_port #{port} " <> erl_flags,
             "-S",
             "mix" | check_args
           ]}
      end

    {output, status} =
      System.cmd(executable, args,
        cd: File.cwd!(),
        env: [{"MIX_ENV", "test"}, {"ERL_INETRC", inetrc}],
        stderr_to_stdout: true
      )

    File.rm_rf(dir)
    {status, output}
  end

  defp interface(ip),
    do: "-kernel inet_dist_use_interface {#{ip |> Tuple.to_list() |> Enum.join(",")}}"

  describe "dns_cluster's form (--query without --application-name)" do
    test "asks A and AAAA records and names the nodes <this node's basename>@<address>",
         %{dns: dns} do
      {status, output} = check(dns, ~w(--query web.internal))

      assert status == 0, output
      assert output =~ "Query web.internal (A), nodes named nonode@<address>"
      assert output =~ "Query web.internal (AAAA), nodes named nonode@<address>"
      refute output =~ "(SRV)"

      for node <- ~w(nonode@127.0.0.21 nonode@127.0.0.22 nonode@fd00::21 nonode@fd00::22),
          do: assert(output =~ inspect(String.to_atom(node)))

      # The test VM is not distributed: it has no basename of its own, and the check says so.
      assert output =~ "✗ not distributed"
      assert output =~ "the names above use \"nonode\"; give one with --query BASENAME=NAME"
      assert output =~ "OK: 4 node name(s); this node is not distributed"
    end

    test "--query BASENAME=NAME names that query's nodes, and several --query are several queries",
         %{dns: dns} do
      {0, output} = check(dns, ~w(--query web=web.internal --query worker=worker.internal))

      assert output =~ "Query web.internal (A), nodes named web@<address>"
      assert output =~ "Query worker.internal (A), nodes named worker@<address>"
      assert output =~ ~s(:"web@127.0.0.21")
      assert output =~ ~s(:"worker@127.0.0.25")
      refute output =~ "nonode@"
      assert output =~ "OK: 5 node name(s)"
    end

    test "--resource-types a,aaaa,srv adds the SRV targets, named after their address",
         %{dns: dns} do
      {0, output} = check(dns, ~w(--query app=web.internal --resource-types a,aaaa,srv))

      assert output =~ "Query web.internal (SRV), nodes named app@<SRV target's address>"
      assert output =~ ~r/0\s+50\s+4370\s+web-3\.internal\s+5\s+127\.0\.0\.23/
      # web-3's address is in no A record of web.internal: only the SRV record gives it.
      assert output =~ ~s(:"app@127.0.0.23")
      assert output =~ "OK: 5 node name(s)"
    end

    test "a name with no AAAA records lists no one there, and is no failure", %{dns: dns} do
      {status, output} = check(dns, ~w(--query app=v4only.internal))

      assert status == 0, output

      assert output =~
               "Query v4only.internal (AAAA), nodes named app@<address>:\n" <>
                 "  none: the name has no records of the type asked"

      assert output =~ "OK: 1 node name(s)"
    end

    test "a node named <basename>@<address> as DNS lists it passes: exit 0", %{dns: dns} do
      {status, output} =
        mix_check(
          dns,
          ~w(--query web.internal),
          ~w(--name app@127.0.0.21),
          interface({127, 0, 0, 21})
        )

      assert status == 0, output
      assert output =~ "its name is among the node names"
      assert output =~ "OK: 4 node name(s), this node's among them"
    end

    test "a node named app@$(hostname -f) while DNS gives addresses is not dialed: exit 3",
         %{dns: dns} do
      {status, output} =
        mix_check(
          dns,
          ~w(--query web.internal),
          ~w(--name app@web-1.internal),
          interface({127, 0, 0, 21})
        )

      assert status == 3, output
      assert output =~ "✗ its name is not among the node names"

      assert output =~
               ~s(the other nodes will dial "app@127.0.0.21" for this node, but it is named :"app@web-1.internal")

      assert output =~ "set RELEASE_NODE=app@127.0.0.21"
      assert output =~ "NOT DIALED: 4 node name(s), but not this node's"
    end
  end

  describe "the exit status" do
    test "a query that fails while another answers: exit 1, naming it", %{dns: dns} do
      # The server serves no example. zone, and refuses to recurse.
      {status, output} = check(dns, ~w(--query web=web.internal --query web=web.example))

      assert status == 1, output

      assert output =~
               "Query web.example (A), nodes named web@<address>:\n  ✗ failed: the server refused the query"

      assert output =~
               "FAILED: web.example (A): the server refused the query; " <>
                 "web.example (AAAA): the server refused the query"

      assert output =~ "check --nameserver"
    end

    test "a name that does not exist: exit 1, with its likely causes", %{dns: dns} do
      {status, output} =
        check(dns, ~w(--service missing --namespace default --application-name app))

      assert status == 1
      assert output =~ "the name does not exist (NXDOMAIN)"
      assert output =~ "a wrong service or namespace"
      assert output =~ "publishNotReadyAddresses: true"
      assert output =~ "a service without ports"
    end

    test "a query's name that does not exist points at --query", %{dns: dns} do
      {1, output} = check(dns, ~w(--query missing.internal))

      assert output =~ "FAILED: missing.internal (A): the name does not exist (NXDOMAIN)"
      assert output =~ "missing.internal does not exist (NXDOMAIN): is --query the name"
    end

    test "statuses 0, 1 and 2 reach the shell through mix", %{dns: dns} do
      assert {0, _} = mix_check(dns, ~w(--query web.internal))
      assert {1, _} = mix_check(dns, ~w(--query missing.internal))
      assert {2, _} = mix_check(dns, ~w(--query web.internal --no-such-flag))
    end
  end

  describe "usage errors: exit 2, one line naming the flag" do
    test "a bad --nameserver names the flag and the value, with no stack trace", %{dns: dns} do
      {status, output} = mix_check(dns, ~w(--query web.internal --nameserver dns.local:53))

      assert status == 2
      assert [line] = String.split(output, "\n", trim: true), output

      assert line ==
               ~s(error: invalid --nameserver dns.local:53: "dns.local" is not an IP address ) <>
                 "(host names are not allowed); expected an IP address with an optional port, " <>
                 "such as 10.96.0.10, 10.96.0.10:53, [fd00::a]:53, or fe80::1%eth0 for a " <>
                 "link-local server (see mix help cluster_srv.check)"
    end

    test "an unknown flag names the nearest known one" do
      {2, output} = run(~w(--query web.internal --aplication-name myapp))

      assert output ==
               "error: unknown flag --aplication-name; did you mean --application-name? " <>
                 "(see mix help cluster_srv.check)\n"

      {2, output} = run(~w(--query web.internal --node_naming ip))
      assert output =~ "unknown flag --node_naming; did you mean --node-naming?"

      # Nothing near: no guess.
      {2, output} = run(~w(--query web.internal --frobnicate))
      assert output =~ "unknown flag --frobnicate (see"
      refute output =~ "did you mean"
    end

    test "a missing or bad value is named by its flag, never by its config key" do
      for {args, message} <- [
            {~w(--service s --namespace n), "--application-name is required with --service"},
            {~w(--service s --application-name a), "--service and --namespace are required"},
            {~w(--query q --timeout), "missing value for --timeout"},
            {~w(--query q --timeout soon), "invalid --timeout soon: expected an integer"},
            {~w(--query q --timeout 0), "invalid --timeout 0: expected a positive integer"},
            {~w(--query q --node-naming fqdn), "invalid --node-naming fqdn: expected hostname"},
            {~w(--query q --resource-types a,mx), "invalid --resource-types a,mx: expected"},
            {["--query", "my app.internal"],
             "invalid --query my app.internal: expected a DNS name"},
            {~w(--query my!app=web.internal), "invalid --query my!app=web.internal: expected"},
            {~w(--service my_svc --namespace n --application-name a), "invalid --service my_svc"},
            {~w(--query q --service s),
             "--service cannot be combined with --query: --query is the full name to ask"},
            {~w(--service s --namespace n --application-name a --protocol udp),
             "--protocol is the protocol of --port-name"},
            {~w(--service s --namespace n --application-name a --nameserver 10.0.0.1:99999),
             ~s(invalid --nameserver 10.0.0.1:99999: port "99999" is not in 1..65535)},
            {~w(--live --query q), "--live takes only --topology"},
            {~w(--query q extra), "unexpected argument(s): extra"}
          ] do
        {status, output} = run(args)
        assert status == 2, inspect(args)
        assert output =~ "error: " <> message, output
        assert [_line] = String.split(output, "\n", trim: true), output
        # No config key (:nameservers, :node_naming...) and no config example.
        refute output =~ ~r/(^|[\s(]):[a-z_]+\b/, output
        refute output =~ "Example:", output
      end
    end

    test "--help prints the usage and exits 0" do
      {0, output} = run(["--help"])
      assert output =~ "usage: mix cluster_srv.check --query NAME"
      assert output =~ "mix cluster_srv.check --live [--topology T]"
    end
  end

  describe "unresolved SRV targets" do
    # Answers without addresses, so that each target's is asked on its own: one target's
    # queries are dropped, one has no address at all, one answers.
    setup do
      name = "fill.internal."

      dns =
        DNS.start!(
          minimal_responses: true,
          drops: true,
          extra: []
        )

      DNS.update!(
        dns,
        [
          "update add #{name} 5 IN SRV 0 33 4370 ok-0.#{name}",
          "update add #{name} 5 IN SRV 0 33 4370 drop-0.#{name}",
          "update add #{name} 5 IN SRV 0 33 4370 none-0.#{name}",
          "update add ok-0.#{name} 5 IN A 127.0.0.41",
          "update add drop-0.#{name} 5 IN A 127.0.0.42",
          "update add none-0.#{name} 5 IN TXT \"no address\""
        ],
        "internal"
      )

      DNS.drop(dns, "drop-0.#{name}")
      on_exit(fn -> DNS.stop(dns) end)
      %{fill_dns: dns}
    end

    test "are shown as unresolved, with why, not as rejected: exit 1", %{fill_dns: dns} do
      {status, output} =
        run(
          ~w(--query app=fill.internal --resource-types srv --timeout 300 --nameserver) ++
            [DNS.nameserver(dns)]
        )

      assert status == 1, output
      assert output =~ "1 node name(s)\n  ✗ unresolved"
      assert output =~ ~s(:"app@127.0.0.41")

      assert output =~
               "✗ unresolved SRV targets (2): DNS lists them, but their address could not be looked up:\n" <>
                 ~s(    "drop-0.fill.internal": its lookup failed: no answer in time\n) <>
                 ~s(    "none-0.fill.internal": it has no A or AAAA record)

      refute output =~ "rejected"
      refute output =~ "no address for node_naming"

      assert output =~
               "FAILED: fill.internal (SRV): the address of 2 SRV target(s) could not be looked " <>
                 ~s[up (for example "drop-0.fill.internal": no answer in time)]
    end
  end

  describe "the Kubernetes form" do
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
      assert output =~ "start with --name myapp@<host>"
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

    test "a _port._proto name the service does not have points at the named port", %{dns: dns} do
      {1, output} =
        check(
          dns,
          ~w(--service myapp-headless --namespace default --application-name myapp --port-name http)
        )

      assert output =~ "_http._tcp.myapp-headless.default.svc.cluster.local."
      assert output =~ "the service has no port with that name"
    end

    test "a service that is not headless is named for what it is: exit 1", %{dns: dns} do
      {status, output} = check(dns, ~w(--service web --namespace default --application-name web))
      assert status == 1
      assert output =~ ~s("web.default.svc.cluster.local": the target is the service itself)
      assert output =~ "clusterIP: None"
      assert output =~ "FAILED: the answers hold no valid node name"
    end

    test "targets outside the service's domain are flagged", %{dns: dns} do
      {0, output} = check(dns, ~w(--service odd --namespace default --application-name odd))

      assert output =~
               ~s("evil.example.com": not under the service's domain odd.default.svc.cluster.local)

      assert output =~ "1 target(s) lie outside odd.default.svc.cluster.local"
    end
  end

  describe "on a distributed node" do
    @myapp ~w(--service myapp-headless --namespace default --application-name myapp)

    test "a node named as DNS lists it passes: exit 0", %{dns: dns} do
      {status, output} =
        mix_check(
          dns,
          @myapp,
          ~w(--name myapp@myapp-0.myapp-headless.default.svc.cluster.local),
          interface({127, 0, 0, 10})
        )

      assert status == 0, output
      assert output =~ "its name is among the node names"
    end

    test "a node named otherwise is told what the others will dial: exit 3", %{dns: dns} do
      {status, output} =
        mix_check(dns, @myapp, ~w(--name myapp@127.0.0.11), interface({127, 0, 0, 11}))

      assert status == 3, output
      assert output =~ "✗ its name is not among the node names"

      assert output =~
               ~s(the other nodes will dial "myapp@myapp-1.myapp-headless.default.svc.cluster.local")

      assert output =~ "RELEASE_NODE="
    end

    test "SRV targets in dashed-IP form that no node name matches: exit 3", %{dns: dns} do
      {status, output} =
        mix_check(
          dns,
          ~w(--service dash-headless --namespace default --application-name app),
          ~w(--name app@127.0.0.31),
          interface({127, 0, 0, 31})
        )

      assert status == 3, output

      assert output =~
               ~s(the other nodes will dial "app@127-0-0-31.dash-headless.default.svc.cluster.local")

      assert output =~ "the SRV targets are dashed IPs"
    end

    test "a node with short names is told to use long names: exit 3", %{dns: dns} do
      {status, output} = mix_check(dns, @myapp, ~w(--sname myapp))
      assert status == 3, output
      assert output =~ "uses short names"
    end
  end

  describe "--live" do
    defp start_strategy(dns, config) do
      probe = Probe.start!()
      topology = :"live_#{System.unique_integer([:positive])}"

      state = %Cluster.Strategy.State{
        topology: topology,
        connect: Probe.mfa(probe, :connect),
        disconnect: Probe.mfa(probe, :disconnect),
        list_nodes: Probe.mfa(probe, :list_nodes),
        config: [nameservers: [DNS.nameserver(dns)], timeout: 500] ++ config
      }

      ExUnit.CaptureLog.capture_log(fn ->
        {:ok, pid} = ClusterSRV.Strategy.start_link([state])
        wait_until(fn -> ClusterSRV.status(pid).last_lookup != nil end)
      end)

      topology
    end

    defp wait_until(fun, tries \\ 100) do
      cond do
        fun.() ->
          :ok

        tries == 0 ->
          flunk("timed out")

        true ->
          Process.sleep(20)
          wait_until(fun, tries - 1)
      end
    end

    test "prints what the running strategy knows", %{dns: dns} do
      topology =
        start_strategy(dns,
          service: "myapp-headless",
          namespace: "default",
          application_name: "myapp",
          cluster_domain: "cluster.local."
        )

      {status, output} = run(["--live", "--topology", Atom.to_string(topology)])
      assert status == 0
      assert output =~ "Topology #{inspect(topology)}"
      assert output =~ "queries: myapp-headless.default.svc.cluster.local. (SRV)"
      assert output =~ ~r/last lookup: \S+: ok \(\d+ µs\)/
      assert output =~ "failing (0): -"
      assert output =~ "listed (3): :\"myapp@myapp-0.myapp-headless.default.svc.cluster.local\""
      assert output =~ "unreachable (0): -"
    end

    test "shows each query failing now, with why", %{dns: dns} do
      topology = start_strategy(dns, query: [{"web", "web.internal"}, {"web", "web.example"}])

      {0, output} = run(["--live", "--topology", Atom.to_string(topology)])

      assert output =~
               "queries: web.internal (A), web.internal (AAAA), web.example (A), web.example (AAAA)"

      assert output =~
               "failing (2): web.example (A): the server refused the query, " <>
                 "web.example (AAAA): the server refused the query"
    end

    test "with no strategy running, exits 1 and says so" do
      {status, output} = run(["--live", "--topology", "nothing_here"])
      assert status == 1
      assert output =~ "no ClusterSRV strategy of topology nothing_here runs on"
    end
  end
end
