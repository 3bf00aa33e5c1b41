defmodule ClusterSRV.Integration.E2ETest do
  # Real BEAM nodes as pods, each in its own network namespace set up as kubelet sets one up,
  # running ClusterSRV.Strategy with no `nameservers` option: the strategy reads the pod's
  # resolv.conf and asks the cluster DNS, a real BIND, at 10.96.0.10:53. One 5-pod StatefulSet
  # is shared; a test that changes it puts it back.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :e2e
  @moduletag :netns
  @moduletag timeout: 180_000

  alias ClusterSRV.Harness.{DNS, Network, NetnsCluster, Pod}

  @interval 1_000

  setup_all do
    network = Network.start!()

    cluster =
      NetnsCluster.start!(
        network: network,
        service: "myapp-headless",
        polling_interval: @interval
      )

    {cluster, pods} = NetnsCluster.add_pods(cluster, 5)
    last_ready = pods |> Enum.map(&Pod.info(&1).ready_at) |> Enum.max()
    {:ok, _} = NetnsCluster.await_mesh(cluster, 10_000)
    meshed_at = System.monotonic_time(:millisecond)

    on_exit(fn ->
      NetnsCluster.stop(cluster)
      Network.stop(network)
    end)

    %{network: network, cluster: cluster, mesh_ms: meshed_at - last_ready}
  end

  defp assert_mesh(cluster, within) do
    started = System.monotonic_time(:millisecond)

    case NetnsCluster.await_mesh(cluster, within) do
      {:ok, ms} ->
        ms

      {:error, members} ->
        flunk(
          "no full mesh within #{within} ms: #{inspect(members)}\n" <>
            NetnsCluster.timeline(cluster, started - 5_000)
        )
    end
  end

  defp restore(cluster, pods), do: Enum.reduce(pods, cluster, &NetnsCluster.kill_pod(&2, &1))

  test "5 pods form a full mesh within 2 polling intervals after the last one starts",
       %{cluster: cluster, mesh_ms: mesh_ms} do
    assert mesh_ms <= 2 * @interval, "meshed #{mesh_ms} ms after the last pod started"

    for pod <- NetnsCluster.pods(cluster) do
      others = cluster |> NetnsCluster.pods() |> Enum.map(& &1.name) |> List.delete(pod.name)
      assert Pod.members(pod) == MapSet.new(others)
      # The strategy never connects its own node.
      refute Enum.any?(Pod.info(pod).connects, fn {_, node, _} -> node == pod.name end)
    end
  end

  test "scale-up: 2 new pods join within 2 polling intervals", %{cluster: cluster} do
    {cluster, new} = NetnsCluster.add_pods(cluster, 2)

    try do
      assert assert_mesh(cluster, 2 * @interval) <= 2 * @interval

      # Each newcomer was linked in by a strategy's own connect, not only by OTP's global.
      for pod <- new do
        assert Enum.any?(
                 strategy_connects(cluster),
                 &(&1.result == true and pod.name in [&1.node, &1.from])
               )
      end
    after
      restore(cluster, new)
    end
  end

  test "with 3 dead pods in DNS, 2 new pods still join within 2 intervals", %{cluster: cluster} do
    cluster = NetnsCluster.add_dead(cluster, 3)

    try do
      # Let the running pods start hanging on the dead ones.
      Process.sleep(@interval + 200)
      {cluster, new} = NetnsCluster.add_pods(cluster, 2)

      try do
        assert assert_mesh(cluster, 2 * @interval) <= 2 * @interval
        assert_linked_despite_dead(cluster, new)
      after
        restore(cluster, new)
      end
    after
      NetnsCluster.clear_dead(cluster)
    end
  end

  # OTP's global connects nodes transitively, so a mesh alone proves little: one connect is
  # enough for global to do the rest. The proof is in the strategies' own connect calls: each
  # new pod was linked to the cluster by a strategy's connect that succeeded within 2 intervals
  # while, in the same pod, a connect to a dead pod was still hanging (its epmd port accepts
  # and never answers, so the connect lasts net_setuptime, 7 s). A strategy that connected one
  # node at a time would have been stuck behind the dead pods, whose names sort first.
  defp assert_linked_despite_dead(cluster, new) do
    dead = NetnsCluster.dead_nodes(cluster)

    # The others may have linked a new pod before its own strategy's first poll ran.
    tried = fn pod, calls -> Enum.count(calls, &(&1.from == pod.name and &1.node in dead)) end

    eventually(
      fn -> Enum.all?(new, &(tried.(&1, strategy_connects(cluster)) >= 3)) end,
      System.monotonic_time(:millisecond) + 2 * @interval
    )

    calls = strategy_connects(cluster)

    for pod <- new do
      ready = Pod.info(pod).ready_at

      assert tried.(pod, calls) == 3,
             "#{pod.label}'s strategy did not try the 3 dead pods once each:\n" <>
               NetnsCluster.timeline(cluster, ready - 3_000)

      links =
        Enum.filter(calls, fn call ->
          call.result == true and pod.name in [call.node, call.from] and call.node not in dead and
            call.ended <= ready + 2 * @interval
        end)

      overlapping =
        Enum.filter(links, fn link ->
          Enum.any?(calls, fn call ->
            call.from == link.from and call.node in dead and call.started <= link.ended and
              (call.ended == nil or call.ended > link.ended)
          end)
        end)

      assert overlapping != [],
             "no connect linked #{pod.label} while a dead connect hung: #{inspect(links)}"
    end
  end

  # Waits until `fun` holds, polling every 20 ms; false at the deadline (monotonic ms).
  defp eventually(fun, deadline) do
    cond do
      fun.() -> true
      System.monotonic_time(:millisecond) >= deadline -> false
      true -> Process.sleep(20) && eventually(fun, deadline)
    end
  end

  # Every connect call any pod's strategy made: who made it, to whom, when, and how it ended.
  # Calls to one node never overlap in one pod, so starts and ends pair up in order.
  defp strategy_connects(cluster) do
    for pod <- NetnsCluster.pods(cluster),
        {node, events} <- Enum.group_by(Pod.info(pod).connects, &elem(&1, 1)),
        call <- pair_calls(events) do
      Map.merge(call, %{from: pod.name, node: node})
    end
  end

  defp pair_calls([{started, _, :start}, {ended, _, {result, _}} | rest]),
    do: [%{started: started, ended: ended, result: result} | pair_calls(rest)]

  defp pair_calls([{started, _, :start}]), do: [%{started: started, ended: nil, result: nil}]
  defp pair_calls([]), do: []

  test "a killed pod that is removed from DNS drops out everywhere", %{cluster: cluster} do
    {with_doomed, [doomed]} = NetnsCluster.add_pods(cluster, 1)
    assert_mesh(with_doomed, 2 * @interval)

    cluster = NetnsCluster.kill_pod(with_doomed, doomed)
    assert_mesh(cluster, 2 * @interval)

    # And it stays out: no strategy brings it back.
    Process.sleep(2 * @interval)

    for pod <- NetnsCluster.pods(cluster) do
      refute MapSet.member?(Pod.members(pod), doomed.name)
    end
  end

  # With the default timeout (2 s per try, 2 tries), a lookup that starts as DNS stops fails
  # 4 s later; 6 intervals let every pod's lookups fail at least once.
  test "a DNS outage of 6 intervals changes no one's membership", %{
    cluster: cluster,
    network: network
  } do
    assert_mesh(cluster, 2 * @interval)
    pods = NetnsCluster.pods(cluster)
    before = Map.new(pods, &{&1.label, Pod.members(&1)})
    dns = Network.dns(network)

    DNS.pause(dns)
    paused_at = System.monotonic_time(:millisecond)

    try do
      # Sample every 100 ms through the outage: membership never changes.
      Stream.repeatedly(fn -> Process.sleep(100) end)
      |> Stream.take_while(fn _ ->
        System.monotonic_time(:millisecond) < paused_at + 6 * @interval
      end)
      |> Enum.each(fn _ ->
        for pod <- pods, do: assert(Pod.members(pod) == before[pod.label], "#{pod.label} changed")
      end)

      for pod <- pods do
        info = Pod.info(pod)
        # Not even a passing change: no membership event at all during the outage.
        assert for({at, members} <- info.history, at >= paused_at, do: members) == []
        # And the outage was real for the strategy: its lookups failed.
        assert Enum.any?(
                 info.log,
                 &(&1 =~ "lookup of myapp-headless.default.svc.cluster.local. failed")
               )
      end
    after
      DNS.resume(dns)
    end

    # The mesh stays whole after DNS returns.
    Process.sleep(2 * @interval)
    for pod <- pods, do: assert(Pod.members(pod) == before[pod.label])
  end

  test "the Deployment layout (_discovery._tcp, pod-name targets) forms a mesh", %{
    network: network
  } do
    cluster =
      NetnsCluster.start!(
        network: network,
        service: "web-headless",
        app: "web",
        layout: :deployment,
        polling_interval: @interval
      )

    try do
      {cluster, pods} = NetnsCluster.add_pods(cluster, 3)
      assert assert_mesh(cluster, 2 * @interval) <= 2 * @interval

      for pod <- pods do
        assert Atom.to_string(pod.name) =~
                 ~r/^web@web-5d8c7f9b6-[a-z0-9]+\.web-headless\.default\.svc\.cluster\.local$/
      end
    after
      NetnsCluster.stop(cluster)
    end
  end

  test "the pod-IP layout (dashed-IP targets, nodes named app@$(POD_IP)) forms a mesh", %{
    network: network
  } do
    cluster =
      NetnsCluster.start!(
        network: network,
        service: "ip-headless",
        app: "ip",
        layout: :pod_ip,
        polling_interval: @interval
      )

    try do
      {cluster, pods} = NetnsCluster.add_pods(cluster, 3)
      assert assert_mesh(cluster, 2 * @interval) <= 2 * @interval

      for pod <- pods do
        assert pod.name == :"ip@#{:inet.ntoa(pod.ip)}"
      end

      # DNS lists dashed IPs, which are not the nodes' names: the strategy named them.
      {:ok, targets} =
        DNS.dig(Network.dns(network), "ip-headless.default.svc.cluster.local", "SRV")

      assert Enum.all?(targets, &(&1 =~ ~r/ 10-244-0-\d+\.ip-headless\./)), inspect(targets)
    after
      NetnsCluster.stop(cluster)
    end
  end
end
