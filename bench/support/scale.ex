defmodule ClusterSRV.Bench.Scale do
  @moduledoc """
  The scale part of `make bench`: `ClusterSRV.Strategy` and the sequential baseline
  (`ClusterSRV.Bench.SequentialSRV`) side by side, in real BEAM pods of the namespace cluster
  (`ClusterSRV.Harness.NetnsCluster`), whose DNS is a real BIND9 at 10.96.0.10:53. Both
  strategies run on the same cluster network, one after the other, polling every second.

    * **Formation.** The pods of a StatefulSet started at once (one `add_pods/3`). From the
      membership history each pod reports (`ClusterSRV.Harness.Pod.info/1`): the time from the
      moment the last pod is up (its first report: its VM has booted and its agent runs; every
      pod is listed by then) to the full mesh, and from the `add_pods/3` call; and per pod, the
      time from its own first report until it is connected to every other pod, and that time
      counted from the last pod up. Rounds alternate which strategy goes first.
    * **DNS load.** An nftables counter in the cluster network's namespace counts what reaches
      the cluster DNS: UDP datagrams to 10.96.0.10:53, and TCP connections to it (a lookup that
      needs TCP opens one for its one query). Queries are the two summed, per second, during
      the formation (from the first pod's start to the full mesh) and in a window of steady
      state after it. They include the pods' own host name lookups, for connects.
    * **CPU in steady state**, in a few pods, measured by `pod_cost/3` in the pod itself
      (`NetnsCluster.rpc/6`, from a hidden node, which joins no one's node list). Over a window
      with nothing changing: the pod VM's CPU per second, from every thread's
      `se.sum_exec_runtime` in `/proc/self/task/*/sched`, with the schedulers' and the NIF
      runtime's threads apart. Then, tracing the strategy process (`:running` and `:receive`)
      for a number of polls: its time on a scheduler and its reductions per poll. A poll is a
      lookup answer for ours, a `:load` tick for the baseline, whose two timer
      chains poll twice per interval.
    * **Rolling update.** A Deployment's pods, updated with maxSurge `surge` and
      maxUnavailable 0: start `surge` pods of the new ReplicaSet, wait until they are in the
      full mesh, stop `surge` old ones as Kubernetes does (SIGTERM; out of DNS once the VM has
      gone), until every pod is replaced, then wait for the full mesh of the new pods. The
      total time, the time per step, and every link lost between two live pods while neither
      was leaving, from every pod's history (the goal is none). A rollout that needs longer
      than a cap is stopped there, and reported so.

  The kernel's ARP table is shared by every namespace and holds 1,024 entries by default; a
  mesh of 50 pods needs about 2,600, so the run raises the host's `gc_thresh2` and `gc_thresh3`
  when they are too low, and puts them back after (the results say so).

  `run(false)` is the full run: 50 pods, maxSurge 5, two formation rounds per strategy (about
  13 minutes on 2 CPUs). `run(true)` is a short one: 10 pods, maxSurge 2. Where network
  namespaces are not available, it returns `%{skipped: reason}`.
  """

  alias ClusterSRV.Bench.{PollTrace, SequentialSRV, Stats}
  alias ClusterSRV.Harness.{Netns, NetnsCluster, Network, Pod}

  @strategies [ours: ClusterSRV.Strategy, baseline: SequentialSRV]
  @interval 1_000
  # The new ReplicaSet's pod template hash, in the new pods' names.
  @template "7c6d5b4a3"
  @dns_table "csrv_dns_count"

  @doc """
  Runs every measurement and returns the results as a map (see `ClusterSRV.Bench.ScaleReport`),
  or `%{skipped: reason}` where the namespace cluster cannot run. Prints progress lines only.
  """
  @spec run(boolean()) :: map()
  def run(quick?), do: run_section(fn -> measure(settings(quick?)) end)

  @doc false
  # Runs a section on the namespace cluster: its results, or `%{skipped: reason}` where the
  # namespace cluster cannot run or the run failed. Shared with ClusterSRV.Bench.DNSLoad.
  def run_section(measure) do
    case Netns.unavailable_reason() do
      nil ->
        try do
          measure.()
        rescue
          # Reported as not measured, so that the other sections' results are still written.
          error ->
            reason = "the run failed: " <> (error |> Exception.message() |> String.slice(0, 300))
            IO.puts("    #{reason}")
            %{skipped: reason}
        end

      reason ->
        IO.puts("    skipped: #{reason}")
        %{skipped: reason}
    end
  end

  # A network holds 245 pod addresses and never reuses one, so each part gets a network of its
  # own: the formation uses rounds × 2 × pods of them, the rolling update 2 × 2 × pods.
  defp settings(true) do
    %{
      quick: true,
      pods: 10,
      surge: 2,
      rounds: 1,
      steady_ms: 5_000,
      cpu_pods: 2,
      cpu_polls: 5,
      mesh_timeout: 60_000,
      step_timeout: 30_000,
      rollout_cap: 120_000
    }
  end

  defp settings(false) do
    %{
      quick: false,
      pods: 50,
      surge: 5,
      rounds: 2,
      steady_ms: 10_000,
      cpu_pods: 3,
      cpu_polls: 10,
      mesh_timeout: 120_000,
      step_timeout: 60_000,
      rollout_cap: 360_000
    }
  end

  defp measure(s) do
    {neighbours, {formation, rollout}} =
      with_neighbour_room(s.pods + s.surge, fn ->
        {with_network(&formation(&1, s)), with_network(&rollout(&1, s))}
      end)

    %{
      neighbour_table: neighbours,
      quick: s.quick,
      pods: s.pods,
      surge: s.surge,
      rounds: s.rounds,
      interval_ms: @interval,
      cpus: cpus(),
      strategies: Map.new(@strategies, fn {key, module} -> {key, inspect(module)} end),
      formation: formation,
      rollout: rollout
    }
  end

  defp with_network(fun) do
    net = Network.start!()

    try do
      count_dns(net)
      fun.(net)
    after
      Network.stop(net)
    end
  end

  # The kernel keeps one ARP table for all namespaces, and by default lets it hold 1,024
  # entries (gc_thresh3). A mesh of n pods needs about n² of them (each pod's entry for every
  # other): past the limit, new neighbours stay unresolved ("neighbor table overflow"), SYNs
  # are never sent, and 50 pods never form a mesh. Raised for the run, as nodes of large
  # Kubernetes clusters raise it, and put back after. Returns what was done, and fun's result.
  @neigh "/proc/sys/net/ipv4/neigh/default/"

  @doc false
  # Shared with ClusterSRV.Bench.DNSLoad, whose pods need the same room.
  def with_neighbour_room(pods, fun) do
    needed = 2 * (pods + 2) * (pods + 2)
    before = for key <- ~w(gc_thresh2 gc_thresh3), do: read_neigh(key)

    case before do
      [thresh2, thresh3] when is_integer(thresh3) and thresh3 < needed ->
        wanted = [max(thresh2, needed), 2 * needed]

        case write_neigh(wanted) do
          :ok ->
            try do
              {%{raised: true, from: before, to: wanted}, fun.()}
            after
              write_neigh(before)
            end

          {:error, reason} ->
            IO.puts(
              "    cannot raise the ARP table's limits (#{inspect(reason)}); pods may not mesh"
            )

            {%{raised: false, limits: before, needed: needed, error: inspect(reason)}, fun.()}
        end

      _ ->
        {%{raised: false, limits: before, needed: needed}, fun.()}
    end
  end

  defp read_neigh(key) do
    case File.read(@neigh <> key) do
      {:ok, value} -> String.to_integer(String.trim(value))
      {:error, _} -> nil
    end
  end

  defp write_neigh([thresh2, thresh3]) do
    with :ok <- File.write(@neigh <> "gc_thresh3", Integer.to_string(thresh3)),
         do: File.write(@neigh <> "gc_thresh2", Integer.to_string(thresh2))
  end

  @doc false
  # The CPUs this VM may run on; shared with ClusterSRV.Bench.DNSLoad.
  def cpus do
    case :erlang.system_info(:logical_processors_available) do
      n when is_integer(n) -> n
      _ -> :erlang.system_info(:logical_processors)
    end
  end

  # -- Formation --------------------------------------------------------------------------------

  defp formation(net, s) do
    runs =
      for round <- 1..s.rounds, {key, strategy} <- order(round) do
        IO.puts("    formation, round #{round}: #{s.pods} pods of #{inspect(strategy)} at once")
        result = form(net, strategy, "f#{round}#{key |> Atom.to_string() |> String.first()}", s)
        IO.puts("      #{describe_round(result)}")
        {key, result}
      end

    Map.new(@strategies, fn {key, _} ->
      {key, summarize_formation(for {^key, result} <- runs, do: result)}
    end)
  end

  # A cluster of `strategy`'s pods on `net`, polling every @interval.
  defp start_cluster(net, strategy, service, opts) do
    NetnsCluster.start!(
      [
        network: net,
        service: service,
        app: "app",
        strategy: strategy,
        polling_interval: @interval
      ] ++
        opts
    )
  end

  defp order(round) when rem(round, 2) == 1, do: @strategies
  defp order(_round), do: Enum.reverse(@strategies)

  defp form(net, strategy, service, s) do
    cluster = start_cluster(net, strategy, service, [])

    try do
      counted = dns_counted(net)
      called_at = now()
      {cluster, pods} = NetnsCluster.add_pods(cluster, s.pods)
      meshed? = match?({:ok, _}, NetnsCluster.await_mesh(cluster, s.mesh_timeout))
      counted_at_mesh = dns_counted(net)
      seen_at = now()

      infos = Map.new(pods, &{&1.name, Pod.info(&1)})
      names = MapSet.new(pods, & &1.name)
      # A pod is up at its first report: its VM has booted, with distribution, and its agent
      # runs. Others may have connected to it before that, as soon as its VM listened.
      up = Map.new(pods, fn pod -> {pod.name, infos[pod.name].history |> hd() |> elem(0)} end)
      {first_up, last_up} = up |> Map.values() |> Enum.min_max()

      full_at =
        Map.new(pods, fn pod ->
          {pod.name, full_at(infos[pod.name].history, MapSet.delete(names, pod.name))}
        end)

      mesh_at = if meshed?, do: mesh_at(pods, infos, names, full_at)
      reached = for {name, at} <- full_at, at != nil, do: {name, at}

      result = %{
        meshed: meshed?,
        mesh_ms: mesh_at && mesh_at - last_up,
        mesh_from_call_ms: mesh_at && mesh_at - called_at,
        start_spread_ms: last_up - first_up,
        per_pod_ms: for({name, at} <- reached, do: at - up[name]),
        per_pod_after_last_ms: for({_, at} <- reached, do: max(at - last_up, 0)),
        unmeshed_pods: length(pods) - length(reached),
        lost_links: length(NetnsCluster.lost_links(cluster, first_up)),
        formation_dns: rate(counted, counted_at_mesh, seen_at - first_up)
      }

      if meshed? do
        # Let the last connects and their lookups pass before counting steady state.
        Process.sleep(2 * @interval)
        before = dns_counted(net)
        started = now()
        Process.sleep(s.steady_ms)
        steady = rate(before, dns_counted(net), now() - started)
        Map.merge(result, %{steady_dns: steady, cpu: cpu(cluster, strategy, s)})
      else
        Map.merge(result, %{steady_dns: nil, cpu: []})
      end
    after
      NetnsCluster.stop(cluster)
    end
  end

  defp describe_round(%{meshed: false} = r),
    do: "no full mesh; #{r.unmeshed_pods} pods never connected to all others"

  defp describe_round(r) do
    steady = r.steady_dns && Float.round(r.steady_dns.per_s, 1)

    "full mesh #{r.mesh_ms} ms after the last pod was up (#{r.mesh_from_call_ms} ms after " <>
      "add_pods was called; ups spread over " <>
      "#{r.start_spread_ms} ms); per pod median #{Stats.median(r.per_pod_ms)} ms; " <>
      "DNS #{Float.round(r.formation_dns.per_s, 1)}/s forming, #{steady}/s steady; " <>
      "strategy #{inspect(Enum.map(r.cpu, &Map.get(&1, :busy_us_per_poll)))} µs/poll"
  end

  # The first time a pod's membership held every other pod.
  defp full_at(history, others) do
    Enum.find_value(history, fn {at, members} -> MapSet.subset?(others, members) && at end)
  end

  # The first time at which every pod held every other pod at once: at the latest of the pods'
  # first full times, or later if one of them lost a link meanwhile.
  defp mesh_at(pods, infos, names, full_at) do
    if Enum.any?(full_at, fn {_, at} -> at == nil end) do
      nil
    else
      earliest = full_at |> Map.values() |> Enum.max()

      infos
      |> Map.values()
      |> Enum.flat_map(fn info -> for {at, _} <- info.history, at >= earliest, do: at end)
      |> Enum.uniq()
      |> Enum.sort()
      |> Enum.find(fn t ->
        Enum.all?(pods, fn pod ->
          others = MapSet.delete(names, pod.name)
          MapSet.subset?(others, members_at(infos[pod.name].history, t))
        end)
      end)
    end
  end

  defp members_at(history, t) do
    Enum.reduce_while(history, MapSet.new(), fn
      {at, members}, _ when at <= t -> {:cont, members}
      _, members -> {:halt, members}
    end)
  end

  defp summarize_formation(rounds) do
    per_pod = Enum.flat_map(rounds, & &1.per_pod_ms)
    after_last = Enum.flat_map(rounds, & &1.per_pod_after_last_ms)
    mesh = for %{mesh_ms: ms} <- rounds, ms != nil, do: ms
    cpu = Enum.flat_map(rounds, & &1.cpu) |> Enum.filter(&Map.has_key?(&1, :polls))
    steady = for %{steady_dns: %{} = d} <- rounds, do: d

    %{
      rounds: rounds,
      meshed_rounds: Enum.count(rounds, & &1.meshed),
      mesh_ms: Stats.median(mesh),
      mesh_from_call_ms: Stats.median(for %{mesh_from_call_ms: ms} <- rounds, ms != nil, do: ms),
      start_spread_ms: Stats.median(Enum.map(rounds, & &1.start_spread_ms)),
      per_pod_ms: %{
        median: Stats.median(per_pod),
        p90: if(per_pod != [], do: Stats.percentile(per_pod, 90)),
        max: if(per_pod != [], do: Enum.max(per_pod)),
        pods: length(per_pod),
        unmeshed: Enum.sum(Enum.map(rounds, & &1.unmeshed_pods))
      },
      per_pod_after_last_ms: %{
        median: Stats.median(after_last),
        p90: if(after_last != [], do: Stats.percentile(after_last, 90)),
        max: if(after_last != [], do: Enum.max(after_last))
      },
      lost_links: Enum.sum(Enum.map(rounds, & &1.lost_links)),
      formation_qps: Stats.median(Enum.map(rounds, & &1.formation_dns.per_s)),
      formation_queries: Stats.median(Enum.map(rounds, & &1.formation_dns.queries)),
      steady_qps: Stats.median(Enum.map(steady, & &1.per_s)),
      steady_tcp_share: Stats.median(Enum.map(steady, &share(&1.tcp_connections, &1.queries))),
      cpu: %{
        pods_measured: length(cpu),
        polls_per_s: median_of(cpu, :polls_per_s),
        busy_us_per_poll: median_of(cpu, :busy_us_per_poll),
        reductions_per_poll: median_of(cpu, :reductions_per_poll),
        runtime_us_per_poll: median_of(cpu, :runtime_us_per_poll),
        vm_ms_per_s: median_of(cpu, :vm_ms_per_s),
        schedulers_ms_per_s: median_of(cpu, :schedulers_ms_per_s),
        runtime_ms_per_s: median_of(cpu, :runtime_ms_per_s)
      }
    }
  end

  defp median_of(samples, key), do: Stats.median(for s <- samples, do: Map.fetch!(s, key))

  defp share(_part, 0), do: nil
  defp share(part, whole), do: part / whole

  # -- CPU in a pod -----------------------------------------------------------------------------

  # A few pods spread over the cluster, measured at the same time.
  defp cpu(cluster, strategy, s) do
    pods = NetnsCluster.pods(cluster)
    step = max(div(length(pods), s.cpu_pods), 1)
    sampled = pods |> Enum.take_every(step) |> Enum.take(s.cpu_pods)

    sampled
    |> Task.async_stream(
      fn pod ->
        NetnsCluster.rpc(
          cluster,
          pod,
          __MODULE__,
          :pod_cost,
          [strategy, s.steady_ms, s.cpu_polls],
          hidden: true
        )
      end,
      timeout: 120_000,
      ordered: true
    )
    |> Enum.map(fn
      {:ok, %{} = cost} -> cost
      {:ok, other} -> %{error: inspect(other)}
      {:exit, reason} -> %{error: inspect(reason)}
    end)
  end

  @doc false
  # Runs in a pod (by NetnsCluster.rpc/6): what the strategy and its VM cost there in steady
  # state. First `window_ms` untraced, for the CPU of the VM's threads; then `polls` polls of
  # the strategy process, traced, for its time on a scheduler and its reductions.
  def pod_cost(strategy, window_ms, polls) do
    pid = strategy_pid(strategy) || raise "no #{inspect(strategy)} process runs here"
    # The caller's connection has just been set up.
    Process.sleep(200)

    threads = thread_cpu_ms()
    started = System.monotonic_time(:microsecond)
    Process.sleep(window_ms)
    threads_after = thread_cpu_ms()
    window_s = (System.monotonic_time(:microsecond) - started) / 1_000_000
    used = used_by_kind(threads, threads_after)

    {:reductions, reductions} = Process.info(pid, :reductions)
    traced_from = System.monotonic_time(:microsecond)
    {busy, count} = PollTrace.collect(pid, polls, 40_000)
    traced_s = (System.monotonic_time(:microsecond) - traced_from) / 1_000_000
    {:reductions, reductions_after} = Process.info(pid, :reductions)
    PollTrace.flush()

    polls_per_s = count / traced_s
    busy_us = System.convert_time_unit(busy, :native, :nanosecond) / 1000

    %{
      polls: count,
      polls_per_s: Float.round(polls_per_s, 2),
      busy_us_per_poll: Float.round(busy_us / max(count, 1), 1),
      reductions_per_poll: div(reductions_after - reductions, max(count, 1)),
      window_s: Float.round(window_s, 2),
      vm_ms_per_s: Float.round(used.total / window_s, 2),
      schedulers_ms_per_s: Float.round(used.schedulers / window_s, 2),
      runtime_ms_per_s: Float.round(used.runtime / window_s, 2),
      # The NIF runtime's threads only do the lookups: their CPU per poll of the window.
      runtime_us_per_poll: Float.round(used.runtime * 1000 / (window_s * polls_per_s), 1)
    }
  end

  defp strategy_pid(strategy) do
    Enum.find(Process.list(), fn pid ->
      case Process.info(pid, :dictionary) do
        {:dictionary, dictionary} -> dictionary[:"$initial_call"] == {strategy, :init, 1}
        nil -> false
      end
    end)
  end

  # Every thread of this OS process: its name and the CPU it has used (ms, µs precision).
  defp thread_cpu_ms do
    for tid <- File.ls!("/proc/self/task"),
        {:ok, comm} <- [File.read("/proc/self/task/#{tid}/comm")],
        {:ok, sched} <- [File.read("/proc/self/task/#{tid}/sched")],
        [_, ms] <- [Regex.run(~r/se\.sum_exec_runtime\s+:\s+([\d.]+)/, sched)],
        into: %{} do
      {tid, {String.trim(comm), String.to_float(ms)}}
    end
  end

  # CPU used between two samples, by kind of thread: the schedulers ("1_scheduler"), the NIF's
  # runtime ("cluster_srv"), and the total. A thread that started meanwhile counts from zero.
  defp used_by_kind(before, later) do
    used =
      for {tid, {comm, ms}} <- later do
        {_, earlier} = Map.get(before, tid, {comm, 0.0})
        {comm, ms - earlier}
      end

    sum = fn pred -> used |> Enum.filter(fn {comm, _} -> pred.(comm) end) |> sum_ms() end

    %{
      total: sum_ms(used),
      schedulers: sum.(&String.ends_with?(&1, "_scheduler")),
      runtime: sum.(&(&1 == "cluster_srv"))
    }
  end

  defp sum_ms(used), do: used |> Enum.map(&elem(&1, 1)) |> Enum.sum()

  # -- Rolling update ---------------------------------------------------------------------------

  # The baseline first, as the formation's first round began with ours.
  defp rollout(net, s) do
    for {key, strategy} <- Enum.reverse(@strategies), into: %{} do
      IO.puts(
        "    rolling update: #{s.pods} pods of #{inspect(strategy)}, maxSurge #{s.surge}, " <>
          "maxUnavailable 0"
      )

      result = roll(net, strategy, "r#{key |> Atom.to_string() |> String.first()}", s)
      IO.puts("      #{describe_rollout(result, s)}")
      {key, result}
    end
  end

  defp roll(net, strategy, service, s) do
    cluster = start_cluster(net, strategy, service, layout: :deployment)

    try do
      {cluster, old} = NetnsCluster.add_pods(cluster, s.pods)

      case NetnsCluster.await_mesh(cluster, s.mesh_timeout) do
        {:ok, _} ->
          Process.sleep(2 * @interval)
          update(net, cluster, old, s)

        {:error, _} ->
          %{
            completed: false,
            stopped:
              "the old ReplicaSet's #{s.pods} pods formed no full mesh within " <>
                "#{div(s.mesh_timeout, 1000)} s",
            steps: 0,
            steps_done: 0,
            total_ms: nil,
            step_ms: [],
            lost_links: nil,
            lost_sample: [],
            strategy_disconnects: nil,
            dns: nil
          }
      end
    after
      NetnsCluster.stop(cluster)
    end
  end

  defp update(net, cluster, old, s) do
    started = now()
    counted = dns_counted(net)
    deadline = started + s.rollout_cap
    batches = Enum.chunk_every(old, s.surge)

    acc =
      Enum.reduce_while(batches, %{cluster: cluster, left: [], steps: [], stopped: nil}, fn
        batch, acc -> step(acc, batch, deadline, s)
      end)

    acc =
      if acc.stopped == nil do
        case NetnsCluster.await_mesh(acc.cluster, remaining(deadline, s.step_timeout)) do
          {:ok, _} -> acc
          {:error, _} -> %{acc | stopped: "the new pods formed no full mesh at the end"}
        end
      else
        acc
      end

    total = now() - started
    dns = rate(counted, dns_counted(net), total)
    {lost, disconnects} = losses(acc.cluster, acc.left, started)

    %{
      completed: acc.stopped == nil,
      stopped: acc.stopped,
      steps: length(batches),
      steps_done: length(acc.steps),
      total_ms: total,
      step_ms: Enum.reverse(acc.steps),
      lost_links: length(lost),
      lost_sample: lost |> Enum.sort_by(&elem(&1, 2)) |> Enum.take(5),
      strategy_disconnects: disconnects,
      dns: dns
    }
  end

  # One step of the update: `surge` new pods, in the full mesh, then `surge` old pods stopped
  # as Kubernetes stops them (SIGTERM; once gone, out of DNS).
  defp step(acc, batch, deadline, s) do
    if now() >= deadline do
      {:halt, %{acc | stopped: "capped at #{div(s.rollout_cap, 1000)} s"}}
    else
      step_started = now()

      case start_new_pods(acc.cluster, length(batch)) do
        {:ok, cluster} ->
          replace(acc, cluster, batch, step_started, deadline, s)

        # A cluster that thrashes can keep a new pod's VM from coming up in time.
        {:error, why} ->
          {:halt, %{acc | stopped: "step #{length(acc.steps) + 1}: #{why}"}}
      end
    end
  end

  defp start_new_pods(cluster, count) do
    {cluster, _new} = NetnsCluster.add_pods(cluster, count, template: @template)
    {:ok, cluster}
  rescue
    error ->
      # The harness's message ends with the pod's log: its first words name the pod.
      {:error, error |> Exception.message() |> String.split([": {", "\n"]) |> hd()}
  end

  # The step's new pods are up: once they are in the full mesh, its old pods are stopped.
  defp replace(acc, cluster, batch, step_started, deadline, s) do
    case NetnsCluster.await_mesh(cluster, remaining(deadline, s.step_timeout)) do
      {:ok, _} ->
        leaving_at = now()

        left =
          batch
          |> Task.async_stream(
            fn pod ->
              :ok = Pod.terminate(pod)
              {pod, leaving_at, Pod.info(pod)}
            end,
            timeout: 40_000
          )
          |> Enum.map(fn {:ok, left} -> left end)

        cluster = Enum.reduce(batch, cluster, &NetnsCluster.kill_pod(&2, &1))

        {:cont,
         %{
           acc
           | cluster: cluster,
             left: left ++ acc.left,
             steps: [now() - step_started | acc.steps]
         }}

      {:error, _} ->
        why =
          if now() >= deadline,
            do: "capped at #{div(s.rollout_cap, 1000)} s",
            else: "step #{length(acc.steps) + 1}'s new pods joined no full mesh"

        {:halt, %{acc | cluster: cluster, stopped: why}}
    end
  end

  defp remaining(deadline, step_timeout), do: max(min(step_timeout, deadline - now()), 1)

  # Links lost between two pods while neither was leaving, from the histories of the pods that
  # live now and of those that left: `[{pod label, lost node, ms since the start}]`; and the
  # strategies' own disconnect calls of a pod that was not leaving.
  defp losses(cluster, left, started) do
    live = NetnsCluster.pods(cluster)
    infos = Map.new(live, &{&1.name, {&1.label, Pod.info(&1)}})

    infos =
      Enum.reduce(left, infos, fn {pod, _, info}, acc ->
        Map.put(acc, pod.name, {pod.label, info})
      end)

    leaving = Map.new(left, fn {pod, at, _} -> {pod.name, at} end)
    leaving? = fn node, at -> Map.has_key?(leaving, node) and at >= leaving[node] end

    lost =
      for {name, {label, info}} <- infos,
          history = info.history,
          {{_, before}, {at, members}} <- Enum.zip(history, Enum.drop(history, 1)),
          at >= started,
          node <- MapSet.difference(before, members),
          not leaving?.(name, at) and not leaving?.(node, at),
          do: {label, Atom.to_string(node), at - started}

    disconnects =
      Enum.sum(
        for {name, {_, info}} <- infos do
          Enum.count(info.disconnects, fn {at, node} ->
            at >= started and not leaving?.(node, at) and not leaving?.(name, at)
          end)
        end
      )

    {lost, disconnects}
  end

  defp describe_rollout(%{total_ms: nil} = r, _s), do: "not run: #{r.stopped}"

  defp describe_rollout(r, s) do
    done =
      if r.completed,
        do: "all #{s.pods} replaced",
        else: "stopped after #{r.steps_done} of #{r.steps} steps (#{r.stopped})"

    "#{done} in #{r.total_ms} ms (median step #{Stats.median(r.step_ms)} ms); " <>
      "#{r.lost_links} links lost between live pods, #{r.strategy_disconnects} disconnects of " <>
      "live pods by the strategies; DNS #{Float.round(r.dns.per_s, 1)}/s"
  end

  # -- Counting DNS queries ---------------------------------------------------------------------

  # Named counters in the cluster network's namespace, before any other rule: UDP datagrams
  # and TCP connections (SYN without ACK) to the cluster DNS, and all TCP packets to it, from
  # the pods (the bridge), not the harness's own updates (nsupdate, over the loopback).
  defp count_dns(%Network{ns: ns}) do
    dns = ns_ip(Network.dns_ip())

    Netns.nft!(ns, """
    table inet #{@dns_table} {
      counter udp_queries { }
      counter tcp_connections { }
      counter tcp_packets { }
      chain in {
        type filter hook input priority -10; policy accept;
        iifname "lo" accept
        ip daddr #{dns} udp dport 53 counter name "udp_queries"
        ip daddr #{dns} tcp dport 53 tcp flags & (syn | ack) == syn counter name "tcp_connections"
        ip daddr #{dns} tcp dport 53 counter name "tcp_packets"
      }
    }
    """)

    :ok
  end

  defp dns_counted(%Network{ns: ns}) do
    {output, 0} = Netns.cmd(ns, [Netns.nft(), "list", "counters", "table", "inet", @dns_table])

    counters =
      ~r/counter (\w+) \{\s*packets (\d+)/
      |> Regex.scan(output)
      |> Map.new(fn [_, name, packets] -> {name, String.to_integer(packets)} end)

    %{
      udp: Map.fetch!(counters, "udp_queries"),
      tcp_connections: Map.fetch!(counters, "tcp_connections"),
      tcp_packets: Map.fetch!(counters, "tcp_packets")
    }
  end

  defp rate(before, later, window_ms) do
    udp = later.udp - before.udp
    tcp = later.tcp_connections - before.tcp_connections
    window_ms = max(window_ms, 1)

    %{
      queries: udp + tcp,
      udp: udp,
      tcp_connections: tcp,
      packets: udp + later.tcp_packets - before.tcp_packets,
      window_ms: window_ms,
      per_s: (udp + tcp) * 1000 / window_ms
    }
  end

  defp ns_ip(ip), do: List.to_string(:inet.ntoa(ip))

  defp now, do: System.monotonic_time(:millisecond)
end
