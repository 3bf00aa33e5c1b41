defmodule ClusterSRV.Integration.E2ETest do
  # Real BEAM nodes as pods, each on its own loopback address, running ClusterSRV.Strategy
  # against a real BIND. One 5-pod cluster is shared; a test that changes it puts it back.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :e2e
  @moduletag timeout: 120_000

  alias ClusterSRV.Harness.{DNS, LocalCluster, Pod}

  @interval 1_000

  setup_all do
    dns = DNS.start!()

    # Short DNS timeouts, so that lookups fail several times within a 3-interval outage.
    cluster =
      LocalCluster.start!(
        dns: dns,
        service: "myapp-headless",
        polling_interval: @interval,
        config: [timeout: 300, attempts: 1]
      )

    {cluster, pods} = LocalCluster.add_pods(cluster, 5)
    last_ready = pods |> Enum.map(&Pod.info(&1).ready_at) |> Enum.max()
    {:ok, _} = LocalCluster.await_mesh(cluster, 10_000)
    meshed_at = System.monotonic_time(:millisecond)

    on_exit(fn ->
      LocalCluster.stop(cluster)
      DNS.stop(dns)
    end)

    %{dns: dns, cluster: cluster, mesh_ms: meshed_at - last_ready}
  end

  defp assert_mesh(cluster, within) do
    case LocalCluster.await_mesh(cluster, within) do
      {:ok, ms} -> ms
      {:error, members} -> flunk("no full mesh within #{within} ms: #{inspect(members)}")
    end
  end

  defp restore(cluster, pods), do: Enum.reduce(pods, cluster, &LocalCluster.kill_pod(&2, &1))

  test "5 pods form a full mesh within 2 polling intervals after the last one starts",
       %{cluster: cluster, mesh_ms: mesh_ms} do
    assert mesh_ms <= 2 * @interval, "meshed #{mesh_ms} ms after the last pod started"

    for pod <- LocalCluster.pods(cluster) do
      others = cluster |> LocalCluster.pods() |> Enum.map(& &1.name) |> List.delete(pod.name)
      assert Pod.members(pod) == MapSet.new(others)
      # The strategy never connects its own node.
      refute Enum.any?(Pod.info(pod).connects, fn {_, node, _} -> node == pod.name end)
    end
  end

  test "scale-up: 2 new pods join within 2 polling intervals", %{cluster: cluster} do
    {cluster, new} = LocalCluster.add_pods(cluster, 2)

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
    cluster = LocalCluster.add_dead(cluster, 3)

    try do
      # Let the running pods start hanging on the dead ones.
      Process.sleep(@interval + 200)
      {cluster, new} = LocalCluster.add_pods(cluster, 2)

      try do
        assert assert_mesh(cluster, 2 * @interval) <= 2 * @interval
        assert_linked_despite_dead(cluster, new)
      after
        restore(cluster, new)
      end
    after
      LocalCluster.clear_dead(cluster)
    end
  end

  # OTP's global connects nodes transitively, so a mesh alone proves little: one connect is
  # enough for global to do the rest. The proof is in the strategies' own connect calls: each
  # new pod was linked to the cluster by a strategy's connect that succeeded within 2 intervals
  # while, in the same pod, a connect to a dead pod was still hanging (net_setuptime is 7 s).
  # A strategy that connected one node at a time would have been stuck behind the dead pods,
  # whose names sort first.
  defp assert_linked_despite_dead(cluster, new) do
    dead = LocalCluster.dead_nodes(cluster)
    # The others' strategies may mesh a new pod before its own first poll has run: wait for
    # that poll's connects to the dead pods (they start at once, and hang).
    for pod <- new, do: await_tried(cluster, pod, dead, Pod.info(pod).ready_at + 2 * @interval)
    calls = strategy_connects(cluster)

    for pod <- new do
      ready = Pod.info(pod).ready_at

      assert Enum.count(calls, &(&1.from == pod.name and &1.node in dead)) == 3,
             "#{pod.label}'s strategy did not try the 3 dead pods"

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

  defp await_tried(cluster, pod, dead, deadline) do
    tried = Enum.count(strategy_connects(cluster), &(&1.from == pod.name and &1.node in dead))

    if tried < length(dead) and System.monotonic_time(:millisecond) < deadline do
      Process.sleep(20)
      await_tried(cluster, pod, dead, deadline)
    end
  end

  # Every connect call any pod's strategy made: who made it, to whom, when, and how it ended.
  # Calls to one node never overlap in one pod, so starts and ends pair up in order.
  defp strategy_connects(cluster) do
    for pod <- LocalCluster.pods(cluster),
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
    {with_doomed, [doomed]} = LocalCluster.add_pods(cluster, 1)
    assert_mesh(with_doomed, 2 * @interval)

    cluster = LocalCluster.kill_pod(with_doomed, doomed)
    assert_mesh(cluster, 2 * @interval)

    # And it stays out: no strategy brings it back.
    Process.sleep(2 * @interval)

    for pod <- LocalCluster.pods(cluster) do
      refute MapSet.member?(Pod.members(pod), doomed.name)
    end
  end

  test "a DNS outage of 3 intervals changes no one's membership", %{cluster: cluster, dns: dns} do
    assert_mesh(cluster, 2 * @interval)
    pods = LocalCluster.pods(cluster)
    before = Map.new(pods, &{&1.label, Pod.members(&1)})

    DNS.pause(dns)
    paused_at = System.monotonic_time(:millisecond)

    try do
      # Sample every 100 ms through the outage: membership never changes.
      Stream.repeatedly(fn -> Process.sleep(100) end)
      |> Stream.take_while(fn _ ->
        System.monotonic_time(:millisecond) < paused_at + 3 * @interval
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

  test "the Deployment layout (_discovery._tcp, pod-name targets) forms a mesh", %{dns: dns} do
    cluster =
      LocalCluster.start!(
        dns: dns,
        service: "web-headless",
        app: "web",
        layout: :deployment,
        polling_interval: @interval
      )

    try do
      {cluster, pods} = LocalCluster.add_pods(cluster, 3)
      assert assert_mesh(cluster, 2 * @interval) <= 2 * @interval

      for pod <- pods do
        assert Atom.to_string(pod.name) =~
                 ~r/^web@web-5d8c7f9b6-[a-z0-9]+\.web-headless\.default\.svc\.cluster\.local$/
      end
    after
      LocalCluster.stop(cluster)
    end
  end
end
