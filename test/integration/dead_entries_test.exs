defmodule ClusterSRV.Integration.DeadEntriesTest do
  # A node failure with `publishNotReadyAddresses: true`: its pods stay listed until eviction
  # (5 minutes by default). However many listed entries are dead, a new pod connects every
  # live one within one polling interval plus 1 s.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :e2e
  @moduletag timeout: 120_000

  alias ClusterSRV.Harness.{DNS, LocalCluster, Pod}

  @interval 1_000

  setup do
    dns = DNS.start!()

    cluster =
      LocalCluster.start!(dns: dns, service: "crowd-headless", polling_interval: @interval)

    on_exit(fn ->
      LocalCluster.stop(cluster)
      DNS.stop(dns)
    end)

    %{cluster: cluster}
  end

  test "with 60 of 100 listed entries dead, a new pod connects the 40 live ones within an interval plus 1 s",
       %{cluster: cluster} do
    # 40 addresses where a connect hangs until net_setuptime (7 s), more than a fixed pool of 32
    # slots would hold; 20 where nothing listens; and 40 live pods that only take connections.
    cluster = LocalCluster.add_dead(cluster, 40, kind: :silent)
    cluster = LocalCluster.add_dead(cluster, 20, kind: :unheld)
    {cluster, live} = LocalCluster.add_pods(cluster, 40, bare: true)
    {_cluster, [newcomer]} = LocalCluster.add_pods(cluster, 1)

    live_names = MapSet.new(live, & &1.name)
    ready = Pod.info(newcomer).ready_at
    deadline = ready + @interval + 1_000
    connected = await_connected(newcomer, live_names, deadline + 500)

    assert MapSet.equal?(MapSet.new(Map.keys(connected)), live_names),
           "not connected: #{inspect(MapSet.difference(live_names, MapSet.new(Map.keys(connected))))}"

    late = for {node, at} <- connected, at > deadline, do: {node, at - ready}

    assert late == [],
           "connected later than #{@interval + 1_000} ms after start: #{inspect(late)}"

    # And the dead entries really were tried: the live ones did not simply come first.
    tried = for {_at, node, :start} <- Pod.info(newcomer).connects, into: MapSet.new(), do: node
    assert MapSet.size(MapSet.difference(tried, live_names)) == 60
  end

  # The strategy's own successful connects to `names`, each with when it ended, once all are in
  # or the deadline passes.
  defp await_connected(pod, names, deadline) do
    connected =
      for {at, node, {true, _ms}} <- Pod.info(pod).connects,
          MapSet.member?(names, node),
          into: %{},
          do: {node, at}

    if map_size(connected) == MapSet.size(names) or
         System.monotonic_time(:millisecond) > deadline do
      connected
    else
      Process.sleep(50)
      await_connected(pod, names, deadline)
    end
  end
end
