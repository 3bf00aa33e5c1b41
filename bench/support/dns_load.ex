defmodule ClusterSRV.Bench.DNSLoad do
  @moduledoc """
  The DNS load part of `make bench`: what the pods of one cluster cost the cluster DNS in
  steady state, `ClusterSRV.Strategy` with its default `polling_jitter` (0.1), with
  `polling_jitter: 0`, and the sequential baseline (`ClusterSRV.Bench.SequentialSRV`), side by
  side on the same pods of the namespace cluster (`ClusterSRV.Harness.NetnsCluster`), polling
  every second.

  The cluster DNS sits behind the counting proxy (`ClusterSRV.Harness.DNSProxy`, no faults):
  BIND listens at 10.96.0.11, and the proxy, at the service address 10.96.0.10 the pods ask,
  records every query it gets with its time and transport, and counts the bytes it sends back.

  The pods' VMs boot once, with ours, and form a full mesh. Then each run replaces the
  strategy of every pod at the same instant (`restart_all/4`, called in one pod, which
  restarts the others by `:erpc`): each pod stops its strategy, waits for a wall-clock time set
  a few seconds ahead, and starts the next one under the pod's supervisor, connections kept.
  That is how pods of a rollout start on many nodes at once: 50 VMs booting on 2 CPUs come up
  over 25 s, which would scatter their polls across the interval with or without jitter. After
  a warm-up, a window of whole intervals is counted at the proxy:

    * queries per pod and polling interval, UDP and TCP apart;
    * the busiest 100 ms: the most queries the proxy got in any 100 ms of the window;
    * bytes the DNS sent, per query and per pod and interval.

  Runs alternate their order round by round. `run(false)` is 50 pods in 2 rounds (about 3
  minutes); `run(true)` is 10 pods whose service has 4 ports, so that their answer needs TCP
  too, in 1 round. Where network namespaces are not available, it returns `%{skipped: reason}`.
  """

  alias ClusterSRV.Bench.{Scale, SequentialSRV, Stats}
  alias ClusterSRV.Harness.{DNSProxy, NetnsCluster, Network}

  @interval 1_000
  # How far ahead of the restart call every pod's next strategy starts: time for the call to
  # reach every pod and stop its strategy first.
  @start_ahead_ms 3_000
  # The 100 ms of the busiest window.
  @burst_ms 100
  # What the pods run, by the key the results use.
  @runs [
    no_jitter: {ClusterSRV.Strategy, [polling_jitter: 0]},
    ours: {ClusterSRV.Strategy, []},
    baseline: {SequentialSRV, []}
  ]

  @doc """
  Runs every measurement and returns the results as a map (see
  `ClusterSRV.Bench.DNSLoadReport`), or `%{skipped: reason}`. Prints progress lines only.
  """
  @spec run(boolean()) :: map()
  def run(quick?), do: Scale.run_section(fn -> measure(settings(quick?)) end)

  @doc "The polling interval of the pods (ms)."
  def interval, do: @interval

  @doc "The width of the busiest window (ms)."
  def burst_ms, do: @burst_ms

  defp settings(true) do
    %{
      quick: true,
      pods: 10,
      ports: for(p <- 1..4, do: {"port#{p}", "tcp", 4368 + p}),
      rounds: 1,
      warmup_intervals: 3,
      window_intervals: 5,
      mesh_timeout: 60_000
    }
  end

  defp settings(false) do
    %{
      quick: false,
      pods: 50,
      ports: [{"epmd", "tcp", 4369}],
      rounds: 2,
      warmup_intervals: 5,
      window_intervals: 10,
      mesh_timeout: 120_000
    }
  end

  defp measure(s) do
    load_before = load_average()

    {neighbours, runs} =
      Scale.with_neighbour_room(s.pods, fn -> with_proxy_network(&rounds(&1, &2, s)) end)

    %{
      quick: s.quick,
      pods: s.pods,
      ports: length(s.ports),
      rounds: s.rounds,
      interval_ms: @interval,
      cpus: Scale.cpus(),
      warmup_intervals: s.warmup_intervals,
      window_intervals: s.window_intervals,
      burst_ms: @burst_ms,
      neighbour_table: neighbours,
      load_average: %{before: load_before, after: load_average()},
      runs: runs,
      summary: Map.new(@runs, fn {key, _} -> {key, summarize(for {^key, r} <- runs, do: r)} end)
    }
  end

  # A cluster network whose DNS is behind the proxy, counting and injecting nothing.
  defp with_proxy_network(fun) do
    net = Network.start!(proxy: true)

    try do
      proxy = Network.proxy(net)
      DNSProxy.pause_faults(proxy)
      fun.(net, proxy)
    after
      Network.stop(net)
    end
  end

  defp rounds(net, proxy, s) do
    cluster =
      NetnsCluster.start!(
        network: net,
        service: "load",
        app: "app",
        strategy: ClusterSRV.Strategy,
        polling_interval: @interval,
        ports: s.ports
      )

    try do
      IO.puts("    #{s.pods} pods booting")
      {cluster, pods} = NetnsCluster.add_pods(cluster, s.pods)

      case NetnsCluster.await_mesh(cluster, s.mesh_timeout) do
        {:ok, _} -> :ok
        {:error, _} -> raise "the #{s.pods} pods formed no full mesh"
      end

      for round <- 1..s.rounds, {key, {strategy, changes}} <- order(round) do
        result = run_one(cluster, proxy, pods, strategy, changes, s)
        IO.puts("    round #{round}, #{key}: #{describe(result)}")
        {key, result}
      end
    after
      NetnsCluster.stop(cluster)
    end
  end

  defp order(round) when rem(round, 2) == 1, do: @runs
  defp order(_round), do: Enum.reverse(@runs)

  # Every pod's strategy replaced at one instant, then a warm-up, then the counted window.
  defp run_one(cluster, proxy, pods, strategy, changes, s) do
    nodes = Enum.map(pods, & &1.name)

    restarted =
      NetnsCluster.rpc(cluster, hd(pods), __MODULE__, :restart_all, [
        nodes,
        strategy,
        changes,
        @start_ahead_ms
      ])

    failed = for {node, {:error, _} = error} <- restarted.results, do: {node, error}
    if failed != [], do: raise("the strategy did not restart in #{inspect(failed)}")
    starts = for {_node, {:ok, at}} <- restarted.results, do: at
    start_at = now() + restarted.start_at - System.os_time(:millisecond)
    Process.sleep(max(start_at + s.warmup_intervals * @interval - now(), 0))

    # Steady state is a full mesh; a strategy that drops live pods may not get back to it.
    meshed? = match?({:ok, _}, NetnsCluster.await_mesh(cluster, 2 * @interval))

    # The window begins half an interval past the pods' polls (all at start_at, then every
    # interval), so that no burst of polls straddles its edges.
    Process.sleep(max(start_at + div((2 * s.warmup_intervals + 1) * @interval, 2) - now(), 0))
    DNSProxy.reset_traffic(proxy)
    from = now()
    window_ms = s.window_intervals * @interval
    Process.sleep(window_ms)
    traffic = DNSProxy.traffic(proxy)
    lost = NetnsCluster.lost_links(cluster, from)

    counted(traffic, from, window_ms, s.pods)
    |> Map.merge(%{
      meshed_at_start: meshed?,
      lost_links: Enum.count(lost, fn {_, _, at} -> at < from + window_ms end),
      start_spread_ms: Enum.max(starts) - Enum.min(starts),
      late_starts: Enum.count(starts, &(&1 > restarted.start_at + 50)),
      window_from_start_ms: from - start_at
    })
  end

  # The queries in the half-open window [from, from + window_ms): with whole intervals, a pod
  # that polls once per interval or less often counts at most one query per interval in it.
  # The bytes are not timed: they are spread over the queries the proxy got since the reset.
  defp counted(%{queries: queries, bytes: bytes}, from, window_ms, pods) do
    times = for {at, transport} <- queries, at >= from, at < from + window_ms, do: {at, transport}
    udp = Enum.count(times, &match?({_, :udp}, &1))
    tcp = length(times) - udp
    pod_intervals = pods * window_ms / @interval
    bytes_per_query = if queries == [], do: 0.0, else: bytes / length(queries)

    %{
      window_ms: window_ms,
      queries: length(times),
      udp: udp,
      tcp: tcp,
      per_pod_interval: length(times) / pod_intervals,
      udp_per_pod_interval: udp / pod_intervals,
      tcp_per_pod_interval: tcp / pod_intervals,
      busiest: busiest(times |> Enum.map(&elem(&1, 0)) |> Enum.sort(), @burst_ms),
      even: length(times) * @burst_ms / window_ms,
      bytes_per_query: bytes_per_query,
      bytes_per_pod_interval: bytes_per_query * length(times) / pod_intervals
    }
  end

  # The most times in any `width` ms: [t, t + width) from each time on.
  defp busiest(sorted, width), do: busiest(sorted, sorted, 0, 0, width)

  defp busiest([], _tail, _count, best, _width), do: best

  defp busiest([first | _] = window, [next | later], count, best, width)
       when next < first + width,
       do: busiest(window, later, count + 1, max(best, count + 1), width)

  defp busiest([_first | rest], tail, count, best, width),
    do: busiest(rest, tail, count - 1, best, width)

  defp describe(r) do
    "#{num(r.per_pod_interval)} queries per pod and interval " <>
      "(UDP #{num(r.udp_per_pod_interval)}, TCP #{num(r.tcp_per_pod_interval)}), " <>
      "busiest #{@burst_ms} ms #{r.busiest} (even #{num(r.even)}), " <>
      "#{round(r.bytes_per_query)} bytes per answer, #{round(r.bytes_per_pod_interval)} per pod " <>
      "and interval; starts within #{r.start_spread_ms} ms; " <>
      "#{if r.meshed_at_start, do: "full mesh", else: "no full mesh"} at the window's start, " <>
      "#{r.lost_links} links lost in it"
  end

  defp summarize(rounds) do
    median = fn key -> Stats.median(for r <- rounds, do: Map.fetch!(r, key)) end

    %{
      rounds: length(rounds),
      per_pod_interval: median.(:per_pod_interval),
      udp_per_pod_interval: median.(:udp_per_pod_interval),
      tcp_per_pod_interval: median.(:tcp_per_pod_interval),
      busiest: median.(:busiest),
      busiest_each: Enum.map(rounds, & &1.busiest),
      even: median.(:even),
      bytes_per_query: median.(:bytes_per_query),
      bytes_per_pod_interval: median.(:bytes_per_pod_interval),
      start_spread_ms: median.(:start_spread_ms),
      lost_links: Enum.sum(Enum.map(rounds, & &1.lost_links)),
      meshed_rounds: Enum.count(rounds, & &1.meshed_at_start)
    }
  end

  # -- In the pods ------------------------------------------------------------------------------

  @doc false
  # Runs in one pod (by NetnsCluster.rpc/6): has every pod of `nodes` replace its strategy by
  # `strategy`, its config changed by `changes`, at one wall-clock time `ahead_ms` from now.
  # Returns that time (OS ms) and each pod's `{:ok, its start}` or `{:error, why}`.
  def restart_all(nodes, strategy, changes, ahead_ms) do
    start_at = System.os_time(:millisecond) + ahead_ms

    results =
      nodes
      |> :erpc.multicall(__MODULE__, :restart, [strategy, changes, start_at], ahead_ms + 30_000)
      |> Enum.map(fn
        {:ok, at} -> {:ok, at}
        other -> {:error, inspect(other)}
      end)

    %{start_at: start_at, results: Enum.zip(nodes, results)}
  end

  @doc false
  # Runs in each pod: stops the topology's strategy under the pod's supervisor (connections
  # stay), then starts `strategy` with the first config and `changes` at `start_at` (OS ms).
  # Returns when it started.
  def restart(strategy, changes, start_at) do
    # The pod application's top supervisor (OTP 25 has no application:get_supervisor/1).
    master = :application_controller.get_master(:cluster_srv_pod)
    {sup, _module} = :application_master.get_child(master)
    [{id, _, _, _}] = Supervisor.which_children(sup)
    {:ok, %{start: {_, :start_link, [[state]]}} = spec} = :supervisor.get_childspec(sup, id)
    :ok = Supervisor.terminate_child(sup, id)
    :ok = Supervisor.delete_child(sup, id)
    config = Keyword.drop(state.config, Keyword.keys(changes) ++ [:polling_jitter]) ++ changes
    Process.sleep(max(start_at - System.os_time(:millisecond), 0))
    started = System.os_time(:millisecond)
    restarted = %{state | config: config}

    {:ok, _} =
      Supervisor.start_child(sup, %{spec | start: {strategy, :start_link, [[restarted]]}})

    started
  end

  defp load_average do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> Enum.take(3) |> Enum.join(" ")
      {:error, _} -> "unknown"
    end
  end

  defp num(x), do: Float.round(x * 1.0, 2)

  defp now, do: System.monotonic_time(:millisecond)
end
