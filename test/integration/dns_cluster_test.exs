defmodule ClusterSRV.Integration.DNSClusterTest do
  # Phoenix's dns_cluster and libcluster's A-record strategies, against a real BIND: A and
  # AAAA queries, several queries, {basename, query}, :ignore, one query failing while another
  # answers, and each of dns_cluster's documented examples, with `DNSCluster` changed to
  # `ClusterSRV` and nothing else.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  @moduletag :integration

  alias ClusterSRV.Harness.{DNS, Pod, Probe, Watchdog}
  alias ClusterSRV.{Resolver, Strategy}

  @interval 200

  setup_all do
    dns = DNS.start!()

    DNS.update!(
      dns,
      [
        "update add web.internal. 5 IN A 127.0.0.21",
        "update add web.internal. 5 IN A 127.0.0.22",
        "update add web.internal. 5 IN AAAA fd00::21",
        "update add web.internal. 5 IN AAAA fd00::22",
        "update add v4only.internal. 5 IN A 127.0.0.23",
        "update add zero.internal. 5 IN A 0.0.0.0",
        "update add zero.internal. 5 IN A 127.0.0.24"
      ],
      "internal"
    )

    on_exit(fn -> DNS.stop(dns) end)
    %{dns: dns}
  end

  describe "ClusterSRV.Resolver.lookup/3 with type: :a or :aaaa" do
    test "returns the addresses, sorted, as dig sees them", %{dns: dns} do
      {:ok, resolver} = Resolver.new(nameservers: [DNS.nameserver(dns)])

      assert Resolver.lookup(resolver, "web.internal.", type: :a) ==
               {:ok, [{127, 0, 0, 21}, {127, 0, 0, 22}]}

      assert Resolver.lookup(resolver, "web.internal.", type: :aaaa) ==
               {:ok, [{0xFD00, 0, 0, 0, 0, 0, 0, 0x21}, {0xFD00, 0, 0, 0, 0, 0, 0, 0x22}]}

      assert Resolver.lookup(resolver, "v4only.internal.", type: :aaaa) == {:error, :no_records}
      assert Resolver.lookup(resolver, "missing.internal.", type: :a) == {:error, :nxdomain}

      {dig, 0} =
        System.cmd("dig", [
          "+short",
          "-p",
          to_string(dns.port),
          "@127.0.0.1",
          "web.internal",
          "A"
        ])

      assert dig |> String.split() |> Enum.sort() == ["127.0.0.21", "127.0.0.22"]
    end

    test "a type that is not :srv, :a or :aaaa names the key and the value", %{dns: dns} do
      {:ok, resolver} = Resolver.new(nameservers: [DNS.nameserver(dns)])

      assert_raise ArgumentError, ~r/invalid value for :type: .*got: :mx/, fn ->
        Resolver.lookup(resolver, "web.internal.", type: :mx)
      end
    end
  end

  describe "the strategy with A and AAAA queries" do
    defp start_strategy(dns, config) do
      probe = Probe.start!()

      state = %Cluster.Strategy.State{
        topology: :"dns_cluster_#{System.unique_integer([:positive])}",
        connect: Probe.mfa(probe, :connect),
        disconnect: Probe.mfa(probe, :disconnect),
        list_nodes: Probe.mfa(probe, :list_nodes),
        config:
          [polling_interval: @interval, nameservers: [DNS.nameserver(dns)], timeout: 500] ++
            config
      }

      {:ok, pid} = Strategy.start_link([state])
      {pid, probe}
    end

    defp connects(count) do
      for _ <- 1..count do
        assert_receive {:probe, :connect, node, _}, 2_000
        node
      end
      |> Enum.sort()
    end

    # The test VM is not distributed: its own base name, dns_cluster's default, is "nonode".
    test "A only names nodes basename@address", %{dns: dns} do
      start_strategy(dns, query: "web.internal", dns_rr_types: [:a])
      assert connects(2) == [:"nonode@127.0.0.21", :"nonode@127.0.0.22"]
      refute_receive {:probe, :connect, _, _}, 3 * @interval
    end

    test "an unspecified address is no node's: it is left out, and said so once", %{dns: dns} do
      log =
        capture_log(fn ->
          start_strategy(dns, query: "zero.internal", dns_rr_types: [:a])
          assert connects(1) == [:"nonode@127.0.0.24"]
          refute_receive {:probe, :connect, _, _}, 3 * @interval
        end)

      assert [_] =
               Regex.scan(
                 ~r/ignoring 1 address.*zero.internal \(A\): an unspecified address.*"0.0.0.0"/,
                 log
               )
    end

    test "AAAA only names them after the IPv6 address, as :inet.ntoa/1 writes it", %{dns: dns} do
      start_strategy(dns, query: "web.internal", dns_rr_types: [:aaaa])
      assert connects(2) == [:"nonode@fd00::21", :"nonode@fd00::22"]
    end

    test "dns_cluster's form asks A and AAAA, as dns_cluster; SRV too, quietly when it has none",
         %{dns: dns} do
      {pid, _probe} = start_strategy(dns, query: "web.internal")
      assert Enum.map(ClusterSRV.status(pid).queries, & &1.type) == [:a, :aaaa]
      assert length(connects(4)) == 4

      log =
        capture_log(fn ->
          start_strategy(dns, query: "web.internal", resource_types: [:a, :aaaa, :srv])

          assert connects(4) ==
                   Enum.sort([
                     :"nonode@127.0.0.21",
                     :"nonode@127.0.0.22",
                     :"nonode@fd00::21",
                     :"nonode@fd00::22"
                   ])

          Process.sleep(3 * @interval)
        end)

      # The name has no SRV records: no warning, since its A and AAAA records answer.
      refute log =~ "failed"
    end

    test "a pod's AAAA record deleted while the name keeps its A records drops that node for good",
         %{dns: dns} do
      DNS.update!(
        dns,
        [
          "update add dual.internal. 5 IN A 127.0.0.51",
          "update add dual.internal. 5 IN AAAA fd00::51",
          "update add dual.internal. 5 IN AAAA fd00::52"
        ],
        "internal"
      )

      log =
        capture_log(fn ->
          {pid, _probe} =
            start_strategy(dns, query: "dual.internal", dns_rr_types: [:a, :aaaa], prune: true)

          assert connects(3) == [:"nonode@127.0.0.51", :"nonode@fd00::51", :"nonode@fd00::52"]

          # fd00::52's pod is gone: its AAAA record is deleted, the A record stays.
          DNS.update!(dns, ["update delete dual.internal. AAAA fd00::52"], "internal")
          assert_receive {:probe, :disconnect, :"nonode@fd00::52", _}, 2_000

          # Then every AAAA record: "no records" for AAAA lists no one, quietly.
          DNS.update!(dns, ["update delete dual.internal. AAAA"], "internal")
          assert_receive {:probe, :disconnect, :"nonode@fd00::51", _}, 2_000
          refute_receive {:probe, _, _, _}, 5 * @interval
          assert ClusterSRV.status(pid).listed == [:"nonode@127.0.0.51"]
        end)

      refute log =~ "failed"
    end

    test "several queries and a {basename, query} tuple", %{dns: dns} do
      DNS.update!(
        dns,
        [
          "update add svc-one.internal. 5 IN A 127.0.0.31",
          "update add svc-two.internal. 5 IN A 127.0.0.32",
          "update add svc-other.internal. 5 IN A 127.0.0.41"
        ],
        "internal"
      )

      start_strategy(dns,
        query: ["svc-one.internal", "svc-two.internal", {"other-basename", "svc-other.internal"}],
        dns_rr_types: [:a],
        application_name: "app"
      )

      assert connects(3) == [:"app@127.0.0.31", :"app@127.0.0.32", :"other-basename@127.0.0.41"]
    end

    test "a name that no longer exists drops the nodes only it listed; listed again, they come back",
         %{dns: dns} do
      DNS.update!(
        dns,
        [
          "update add first.internal. 5 IN A 127.0.0.61",
          "update add second.internal. 5 IN A 127.0.0.62"
        ],
        "internal"
      )

      log =
        capture_log(fn ->
          {_pid, _probe} =
            start_strategy(dns,
              query: ["first.internal", "second.internal"],
              dns_rr_types: [:a],
              prune: true
            )

          assert connects(2) == [:"nonode@127.0.0.61", :"nonode@127.0.0.62"]

          # The second name is gone (NXDOMAIN, a successful answer): what only it listed goes.
          DNS.update!(dns, ["update delete second.internal. A"], "internal")
          assert_receive {:probe, :disconnect, :"nonode@127.0.0.62", _}, 2_000
          refute_receive {:probe, :disconnect, _, _}, 5 * @interval

          # It answers again, with another node: that one is connected.
          DNS.update!(dns, ["update add second.internal. 5 IN A 127.0.0.63"], "internal")
          assert_receive {:probe, :connect, :"nonode@127.0.0.63", _}, 2_000
        end)

      refute log =~ "lookup of second.internal (A) failed"
    end
  end

  describe "dns_cluster's documented examples, with ClusterSRV for DNSCluster" do
    test "start_link(query: :ignore) returns :ignore, whatever else is given" do
      # A bad interval would raise: :ignore returns before anything is looked at.
      assert ClusterSRV.start_link(query: :ignore, interval: -1) == :ignore
    end

    test "{ClusterSRV, query: Application.get_env(:my_app, :dns_cluster_query) || :ignore} with no query configured" do
      Application.delete_env(:my_app, :dns_cluster_query)
      child = {ClusterSRV, query: Application.get_env(:my_app, :dns_cluster_query) || :ignore}
      {:ok, sup} = Supervisor.start_link([child], strategy: :one_for_one)

      assert Supervisor.which_children(sup) == [
               {{ClusterSRV, :cluster_srv}, :undefined, :worker, [ClusterSRV]}
             ]

      Supervisor.stop(sup)
    end

    @tag :e2e
    test "{ClusterSRV, query: \"myapp.internal\"}: pods named myapp@<ip> form a mesh", %{dns: dns} do
      pods = start_pods(dns, "myapp", 3, fn _ -> [query: "myapp.internal"] end, "myapp.internal")

      assert_mesh_then_stop(pods)
    end

    @tag :e2e
    test "config :my_app, :dns_cluster_query, [\"app.internal\"]: a list of one query", %{
      dns: dns
    } do
      pods = start_pods(dns, "app", 3, fn _ -> [query: ["app.internal"]] end, "app.internal")

      assert_mesh_then_stop(pods)
    end

    @tag :e2e
    test ~S|query: ["app-one.internal", "app-two.internal", {"other-basename", "other.internal"}]|,
         %{dns: dns} do
      query = ["app-one.internal", "app-two.internal", {"other-basename", "other.internal"}]
      config = fn _ -> [query: query] end

      pods =
        start_pods(dns, "app", 2, config, "app-one.internal", 70) ++
          start_pods(dns, "app", 2, config, "app-two.internal", 80) ++
          start_pods(dns, "other-basename", 2, config, "other.internal", 90)

      assert_mesh_then_stop(pods)
    end

    @tag :e2e
    test "dns_cluster's other options: resource_types, connect_timeout, log and name", %{
      dns: dns
    } do
      config = fn _ ->
        [
          query: "opts.internal",
          resource_types: [:a],
          connect_timeout: 5_000,
          log: :debug,
          name: MyApp.DNSCluster
        ]
      end

      pods = start_pods(dns, "opts", 2, config, "opts.internal", 120)

      assert_mesh_then_stop(pods)
    end

    @tag :e2e
    test ~S|query: {"remote", "remote-app.internal"} connects nodes of another basename|,
         %{dns: dns} do
      local =
        start_pods(
          dns,
          "app",
          1,
          fn _ -> [query: {"remote", "remote-app.internal"}] end,
          "local.internal",
          100
        )

      remote =
        start_pods(
          dns,
          "remote",
          2,
          fn _ -> [query: "remote-app.internal"] end,
          "remote-app.internal",
          110
        )

      try do
        assert_mesh(local ++ remote)
        # The local pod's own strategy connected them: its query names them remote@<ip>.
        [pod] = local
        linked = for {_, node, {true, _}} <- Pod.info(pod).connects, do: node
        assert Enum.sort(linked) == Enum.sort(Enum.map(remote, & &1.name))
      after
        stop_pods(local ++ remote)
      end
    end
  end

  # Pods as dns_cluster's users run them: `{ClusterSRV, opts}` in their tree, named
  # basename@<address>, no nameservers (the VM resolves through ERL_INETRC, as a platform's
  # resolv.conf would make it). Their addresses are listed at `name` in the `internal` zone.
  defp start_pods(dns, basename, count, config, name, first \\ 10) do
    dir = Watchdog.tmp_dir("cluster_srv_pods")
    inetrc = DNS.write_inetrc!(dns, Path.join(dir, "inetrc"))
    subnet = {127, 77, :rand.uniform(200)}

    pods =
      for i <- 0..(count - 1) do
        ip = Tuple.append(subnet, first + i)
        host = List.to_string(:inet.ntoa(ip))

        Pod.start!(
          label: "#{basename}-#{first + i}",
          host: host,
          ip: ip,
          app: basename,
          config: config.(i) ++ [interval: 500],
          standalone: true,
          dist_port: 4370,
          inetrc: inetrc,
          dir: dir
        )
      end

    DNS.update!(
      dns,
      for(pod <- pods, do: "update add #{name}. 5 IN A #{:inet.ntoa(pod.ip)}"),
      "internal"
    )

    for pod <- pods, do: :ok = Pod.await_ready(pod)
    pods
  end

  defp stop_pods(pods), do: Enum.each(pods, &Pod.stop/1)

  # A full mesh of `pods`, asserted; the pods are stopped either way.
  defp assert_mesh_then_stop(pods) do
    assert_mesh(pods)
  after
    stop_pods(pods)
  end

  defp assert_mesh(pods) do
    case Pod.await_mesh(pods, 5_000) do
      {:ok, _ms} -> :ok
      {:error, members} -> flunk("no full mesh: #{inspect(members)}")
    end
  end
end
