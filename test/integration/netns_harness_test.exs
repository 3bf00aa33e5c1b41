defmodule ClusterSRV.Integration.NetnsHarnessTest do
  # The namespace cluster itself: that a pod is what kubelet makes, that no packet can leave
  # the namespaces, that dead pods behave as dead pods do, and that nothing outlives a VM
  # killed with SIGKILL. Tests of the strategy rely on all four.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :netns
  @moduletag timeout: 120_000

  alias ClusterSRV.Harness.{Netns, Network, NetnsCluster, Pod}

  setup_all do
    network = Network.start!()
    cluster = NetnsCluster.start!(network: network, service: "kube", app: "kube")
    {cluster, _pods} = NetnsCluster.add_pods(cluster, 2)
    {:ok, _} = NetnsCluster.await_mesh(cluster, 10_000)

    on_exit(fn ->
      NetnsCluster.stop(cluster)
      Network.stop(network)
    end)

    %{network: network, cluster: cluster}
  end

  # Runs a command with the pod's own view: its network, mounts (/etc/hosts and resolv.conf)
  # and host name, as `kubectl exec` would.
  defp in_pod(pod, argv) do
    pid = Pod.info(pod).os_pid

    {output, 0} =
      System.cmd("nsenter", ["-t", pid, "-n", "-m", "-u" | argv], stderr_to_stdout: true)

    String.trim(output)
  end

  test "a pod has its own host name, kubelet's hosts and resolv.conf, and its own epmd", %{
    cluster: cluster,
    network: network
  } do
    [pod, other] = NetnsCluster.pods(cluster)
    fqdn = "kube-0.kube.default.svc.cluster.local"

    assert in_pod(pod, ~w(hostname)) == "kube-0"
    assert in_pod(pod, ~w(hostname -f)) == fqdn
    # The node named itself the way the seeds do, app@$(hostname -f).
    assert pod.name == :"kube@#{fqdn}"

    assert in_pod(pod, ~w(cat /etc/resolv.conf)) ==
             "search default.svc.cluster.local svc.cluster.local cluster.local\n" <>
               "nameserver 10.96.0.10\noptions ndots:5"

    assert in_pod(pod, ~w(grep -v ^# /etc/hosts)) =~ ~r/^10\.244\.0\.\d+\t#{fqdn}\tkube-0$/m

    # The system resolver finds the other pod through the cluster DNS, and the search list
    # completes a short name, as the distribution resolves its peers.
    other_ip = List.to_string(:inet.ntoa(other.ip))
    assert in_pod(pod, ~w(getent hosts kube-1.kube.default.svc.cluster.local)) =~ other_ip
    assert in_pod(pod, ~w(getent hosts kube-1.kube)) =~ other_ip

    # Its own epmd listens on 4369 in the pod; the cluster DNS on 53 at the service address.
    assert in_pod(pod, ~w(ss -Hltn sport = :4369)) =~ "4369"
    assert Netns.cmd!(network.ns, ~w(ss -Hlun sport = :53)) =~ "10.96.0.10:53"

    # And the strategy was given no nameservers: it reads this resolv.conf.
    refute Keyword.has_key?(cluster.config, :nameservers)
    assert Enum.any?(Pod.info(pod).lookups, &match?({_, ":ok", 2}, &1))
  end

  # The veths on the cluster network's bridge, one line each.
  defp veths(network),
    do: network.ns |> Netns.cmd!(~w(ip -o link show type veth)) |> String.split("\n", trim: true)

  test "the cluster network has no link to the host and no route out", %{
    cluster: cluster,
    network: network
  } do
    routes = network.ns |> Netns.cmd!(~w(ip -4 route show)) |> String.split("\n", trim: true)

    assert routes == ["10.244.0.0/24 dev br0 proto kernel scope link src 10.244.0.1 "] or
             routes == ["10.244.0.0/24 dev br0 proto kernel scope link src 10.244.0.1"]

    # Every veth in the cluster network leads into one of this run's pod namespaces.
    veths = veths(network)
    assert veths != []
    for veth <- veths, do: assert(veth =~ "link-netns csrv-#{Netns.run_tag()}-", veth)

    # From a pod and from the cluster network, the host's own address and the internet are
    # unreachable.
    {host_ips, 0} = System.cmd("hostname", ["-I"])
    [pod | _] = NetnsCluster.pods(cluster)

    for ns <- [pod.netns, network.ns],
        address <- String.split(host_ips) ++ ["1.1.1.1"],
        {:ok, ip} = :inet.parse_address(String.to_charlist(address)),
        tuple_size(ip) == 4 do
      assert {:error, reason} = :gen_tcp.connect(ip, 22, [netns: Netns.path(ns)], 1_000),
             "#{ns} reached #{address}"

      assert reason in [:enetunreach, :ehostunreach], "#{ns} to #{address}: #{reason}"
    end
  end

  # A namespace lives on, unnamed, while anything holds it (here a socket the test VM opened in
  # it, as a dead pod's listener is), and the kernel frees it, and the veth end in it, only
  # later: a removed sandbox's veth on the bridge once outlived its name, listed with a bare
  # link-netnsid.
  test "a removed sandbox takes its veth with it at once, even while something holds its namespace",
       %{network: network} do
    sandbox = Network.sandbox!(network, "held")
    assert Enum.any?(veths(network), &(&1 =~ "#{sandbox.veth}@"))

    {:ok, held} = :gen_tcp.listen(0, ip: sandbox.ip, netns: Netns.path(sandbox.ns))

    try do
      Network.remove_sandbox(network, sandbox)
      veths = veths(network)
      refute Enum.any?(veths, &(&1 =~ "#{sandbox.veth}@")), Enum.join(veths, "\n")
      for veth <- veths, do: assert(veth =~ "link-netns csrv-#{Netns.run_tag()}-", veth)
    after
      :gen_tcp.close(held)
    end
  end

  test "a connect to a dead pod hangs for net_setuptime; to an address no one holds it fails sooner",
       %{cluster: cluster} do
    cluster = NetnsCluster.add_dead(cluster, 1, :silent)
    cluster = NetnsCluster.add_dead(cluster, 1, :unheld)

    try do
      [silent, unheld] = NetnsCluster.dead_nodes(cluster) |> Enum.sort()
      [pod | _] = NetnsCluster.pods(cluster)

      ended = fn node ->
        for {_, ^node, {result, ms}} <- Pod.info(pod).connects, do: {result, ms}
      end

      deadline = System.monotonic_time(:millisecond) + 15_000

      Stream.repeatedly(fn -> Process.sleep(100) end)
      |> Enum.find(fn _ ->
        (ended.(silent) != [] and ended.(unheld) != []) or
          System.monotonic_time(:millisecond) > deadline
      end)

      # Its epmd port accepts and never answers: the whole of net_setuptime (7 s).
      assert [{false, ms} | _] = ended.(silent)
      assert ms in 6_500..9_000, "the dead pod's connect took #{ms} ms"

      # No one answers ARP for it: the connect fails once ARP gives up.
      assert [{false, ms} | _] = ended.(unheld)
      assert ms < 6_000, "the unheld address's connect took #{ms} ms"
    after
      NetnsCluster.clear_dead(cluster)
    end
  end

  # A VM that builds a network with two pods, says what it made, and waits to be killed.
  @throwaway ~S"""
  alias ClusterSRV.Harness.{Network, NetnsCluster, Netns}
  net = Network.start!()
  cluster = NetnsCluster.start!(network: net, service: "doomed", app: "doomed")
  {cluster, _} = NetnsCluster.add_pods(cluster, 2)
  namespaces = [net.ns | Enum.map(NetnsCluster.pods(cluster), & &1.netns)]
  IO.puts("@@ built #{System.pid()} #{Enum.join(namespaces, " ")}")
  Process.sleep(:infinity)
  """

  test "nothing a VM made outlives it when it is killed with SIGKILL: namespaces, processes, files" do
    run = "janitor#{System.unique_integer([:positive])}"
    tag = String.slice(run, -8, 8)
    ebin = ClusterSRV.Harness.Network |> :code.which() |> List.to_string() |> Path.dirname()

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 4096},
        {:args, ["-pa", ebin, "-e", @throwaway]},
        {:env, [{~c"CLUSTER_SRV_RUN", String.to_charlist(run)}]}
      ])

    try do
      {vm, namespaces} = await_built(port)
      assert length(namespaces) == 3
      assert Enum.sort(Netns.leftovers(tag)) == Enum.sort(namespaces)
      for ns <- namespaces, do: assert(File.dir?(Netns.etc_dir(ns)) or ns =~ "-net")

      # Everything it runs: its children (the janitor, watchdogs) and what runs in its
      # namespaces (named, the pods' VMs, their epmd daemons).
      processes = descendants(vm) ++ Enum.flat_map(namespaces, &Netns.pids/1)
      assert length(processes) >= 8
      # And its files: BIND's and the pods' directories.
      assert length(Path.wildcard(Path.join(System.tmp_dir!(), "cluster_srv_*_#{run}_*"))) >= 2

      System.cmd("kill", ["-KILL", vm])
      gone_at = System.monotonic_time(:millisecond) + 5_000

      left = fn ->
        Netns.leftovers(tag) ++
          Enum.filter(namespaces, &File.exists?(Netns.etc_dir(&1))) ++
          Enum.filter(processes, &alive?/1) ++
          Path.wildcard(Path.join(System.tmp_dir!(), "cluster_srv_*_#{run}_*"))
      end

      Stream.repeatedly(fn -> Process.sleep(100) end)
      |> Enum.find(fn _ -> left.() == [] or System.monotonic_time(:millisecond) > gone_at end)

      assert left.() == [], "still there 5 s after the VM was killed: #{inspect(left.())}"
    after
      # Whatever a failed janitor left, so that the run itself stays clean.
      for ns <- Netns.leftovers(tag), do: Netns.delete(ns)
    end
  end

  defp await_built(port) do
    receive do
      {^port, {:data, {:eol, "@@ built " <> rest}}} ->
        [vm | namespaces] = String.split(rest)
        {vm, namespaces}

      {^port, {:data, _other}} ->
        await_built(port)

      {^port, {:exit_status, status}} ->
        flunk("the throwaway VM exited with #{status}")
    after
      30_000 -> flunk("the throwaway VM did not build its cluster")
    end
  end

  defp descendants(pid) do
    {output, 0} = System.cmd("ps", ["-eo", "pid=,ppid="])

    children =
      for line <- String.split(output, "\n", trim: true),
          [child, parent] = String.split(line),
          parent == pid,
          do: child

    children ++ Enum.flat_map(children, &descendants/1)
  end

  # A zombie has exited; only its parent has yet to reap it.
  defp alive?(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> not (stat |> String.split(") ") |> List.last() |> String.starts_with?("Z"))
      {:error, _} -> false
    end
  end
end
