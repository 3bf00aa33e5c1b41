defmodule ClusterSRV.Bench.ScaleReport do
  @moduledoc """
  The report section of `ClusterSRV.Bench.Scale`'s results: "## Scale, on the namespace
  cluster", with medians and ratios (baseline ÷ ours) side by side, and the section's targets
  for the report's targets table, as `{description, value, met?}`.

  Nothing here measures: it only formats what `ClusterSRV.Bench.Scale.run/1` returned, and
  says so when that run was skipped.
  """

  alias ClusterSRV.Bench.Stats

  @doc "The section, as markdown."
  @spec markdown(map()) :: String.t()
  def markdown(%{skipped: reason}) do
    """
    ## Scale, on the namespace cluster

    Not measured in this run: #{reason}.
    """
  end

  def markdown(r) do
    f = r.formation
    ro = r.rollout
    interval = div(r.interval_ms, 1000)

    """
    ## Scale, on the namespace cluster

    #{if r.quick, do: "**Quick run: #{r.pods} pods, maxSurge #{r.surge}.**\n\n", else: ""}\
    Real BEAM pods in network namespaces, each as kubelet would run it, with a real BIND9 as the
    cluster DNS at 10.96.0.10:53; every pod polls every #{interval} s. **This machine's
    #{r.cpus} CPUs run every pod, the DNS and the benchmark at once**, so the times include
    waiting for a CPU: #{r.pods} VMs booting together take seconds to come up.#{neighbours(r)}

    ### #{r.pods} pods started at once (a StatefulSet; #{rounds(r.rounds)} per strategy, alternating which goes first)

    | | ClusterSRV.Strategy | sequential baseline | baseline ÷ ours |
    |---|---|---|---|
    #{row("full mesh, after the last pod is up", secs(f.ours.mesh_ms), secs(f.baseline.mesh_ms), ratio(f.baseline.mesh_ms, f.ours.mesh_ms))}
    #{row("full mesh, after `add_pods` was called", secs(f.ours.mesh_from_call_ms), secs(f.baseline.mesh_from_call_ms), ratio(f.baseline.mesh_from_call_ms, f.ours.mesh_from_call_ms))}
    #{row("pods coming up, first to last", secs(f.ours.start_spread_ms), secs(f.baseline.start_spread_ms), "")}
    #{row("per pod, from its start to connected to all others: median / p90 / max", spread(f.ours.per_pod_ms), spread(f.baseline.per_pod_ms), ratio(f.baseline.per_pod_ms.median, f.ours.per_pod_ms.median))}
    #{row("per pod, after the last pod is up: median / p90 / max", spread(f.ours.per_pod_after_last_ms), spread(f.baseline.per_pod_after_last_ms), ratio(f.baseline.per_pod_after_last_ms.median, f.ours.per_pod_after_last_ms.median))}
    #{row("pods never connected to all others", f.ours.per_pod_ms.unmeshed, f.baseline.per_pod_ms.unmeshed, "")}
    #{row("links lost between live pods while forming", f.ours.lost_links, f.baseline.lost_links, "")}
    #{row("DNS queries per second while forming", qps(f.ours.formation_qps), qps(f.baseline.formation_qps), ratio(f.baseline.formation_qps, f.ours.formation_qps))}
    #{row("DNS queries per second in steady state", qps(f.ours.steady_qps), qps(f.baseline.steady_qps), ratio(f.baseline.steady_qps, f.ours.steady_qps))}
    #{row("… per pod and polling interval", per_pod(f.ours.steady_qps, r), per_pod(f.baseline.steady_qps, r), "")}
    #{row("… of which over TCP (the answer is truncated over UDP)", percent(f.ours.steady_tcp_share), percent(f.baseline.steady_tcp_share), "")}

    A pod is up at its first report (its VM has booted and its agent runs); the others may
    connect to it sooner, as soon as its VM listens. The mesh times come from the membership
    each pod reports. DNS queries are what an nftables counter in the cluster network counts
    reaching 10.96.0.10:53 from the pods: UDP datagrams, plus TCP connections (one per query
    that needs TCP). They include the host name lookups of connects (an A and an AAAA query each,
    by the C library), and "while forming" runs from the first pod up to the full mesh. The
    baseline's lookup is `:inet_res.getbyname/2`, whose cache keeps an answer for its TTL (5 s
    here), so most of its polls ask no one and act on an answer up to 5 s old; ours asks DNS at
    every poll.

    ### The strategy's cost in a pod, in steady state (median of #{f.ours.cpu.pods_measured} and #{f.baseline.cpu.pods_measured} pods)

    | | ClusterSRV.Strategy | sequential baseline | baseline ÷ ours |
    |---|---|---|---|
    #{row("polls per second", num(f.ours.cpu.polls_per_s), num(f.baseline.cpu.polls_per_s), "")}
    #{row("strategy process on a scheduler, per poll (µs)", num(f.ours.cpu.busy_us_per_poll), num(f.baseline.cpu.busy_us_per_poll), ratio(f.baseline.cpu.busy_us_per_poll, f.ours.cpu.busy_us_per_poll))}
    #{row("reductions per poll", num(f.ours.cpu.reductions_per_poll), num(f.baseline.cpu.reductions_per_poll), ratio(f.baseline.cpu.reductions_per_poll, f.ours.cpu.reductions_per_poll))}
    #{row("NIF runtime threads, CPU per poll (µs)", num(f.ours.cpu.runtime_us_per_poll), num(f.baseline.cpu.runtime_us_per_poll), "")}
    #{row("strategy per second: scheduler time + runtime threads (ms)", num(strategy_ms_per_s(f.ours.cpu)), num(strategy_ms_per_s(f.baseline.cpu)), ratio(strategy_ms_per_s(f.baseline.cpu), strategy_ms_per_s(f.ours.cpu)))}
    #{row("whole pod VM, CPU per second (ms)", num(f.ours.cpu.vm_ms_per_s), num(f.baseline.cpu.vm_ms_per_s), ratio(f.baseline.cpu.vm_ms_per_s, f.ours.cpu.vm_ms_per_s))}

    Measured inside the pod, called from a hidden node: the VM's threads' CPU
    (`/proc/self/task/*/sched`) over a quiet window, then the strategy process traced for a
    number of polls. A poll is a lookup answer for ours, and a `:load` tick for the baseline,
    whose two timer chains (libcluster's DNSSRV starts one in `init` and another with its
    timeout 0) poll twice per interval. Scheduler time is traced from scheduled in to out, so
    with #{r.pods} VMs sharing #{r.cpus} CPUs it includes the time the OS took a scheduler thread
    away meanwhile. The whole VM's CPU includes keeping #{r.pods - 1} distribution connections.
    The baseline's polls cost less here because most of them send no query: `:inet_res`'s cache
    answers them (see the DNS rows above). Ours sends one query per poll and keeps nothing
    between polls, so a fault or a stale answer cannot outlive the poll that saw it.

    ### A rolling update of #{r.pods} pods, maxSurge #{r.surge}, maxUnavailable 0 (a Deployment)

    | | ClusterSRV.Strategy | sequential baseline | baseline ÷ ours |
    |---|---|---|---|
    #{row("completed", completed(ro.ours), completed(ro.baseline), "")}
    #{row("total time", secs(finished_ms(ro.ours)), secs(finished_ms(ro.baseline)), ratio(finished_ms(ro.baseline), finished_ms(ro.ours)))}
    #{row("time per step (median)", secs(Stats.median(ro.ours.step_ms)), secs(Stats.median(ro.baseline.step_ms)), ratio(Stats.median(ro.baseline.step_ms), Stats.median(ro.ours.step_ms)))}
    #{row("links lost between live, listed pods (goal 0)", ro.ours.lost_links, ro.baseline.lost_links, "")}
    #{row("the strategies' own disconnect calls of live pods", ro.ours.strategy_disconnects, ro.baseline.strategy_disconnects, "")}
    #{row("DNS queries per second during the update", qps(ro.ours.dns && ro.ours.dns.per_s), qps(ro.baseline.dns && ro.baseline.dns.per_s), ratio(ro.baseline.dns && ro.baseline.dns.per_s, ro.ours.dns && ro.ours.dns.per_s))}

    Each step starts #{r.surge} pods of the new ReplicaSet, waits until they are in the full mesh,
    then stops #{r.surge} old pods as Kubernetes does (SIGTERM; out of DNS once the VM has gone).
    A link lost counts when a pod's membership dropped another pod while neither was
    leaving (from SIGTERM on), from the histories of every pod, old and new.
    #{lost_samples(ro)}#{baseline_losses(ro)}
    """
  end

  @doc "The section's targets, for the report's targets table: `{description, value, met?}`."
  @spec targets(map()) :: [{String.t(), String.t(), boolean()}]
  def targets(%{skipped: _}), do: []

  def targets(r) do
    f = r.formation
    ro = r.rollout
    within = 2 * r.interval_ms

    [
      {"#{r.pods} pods started at once: a full mesh within 2 polling intervals of the last pod up (#{secs(within)})",
       secs(f.ours.mesh_ms), is_number(f.ours.mesh_ms) and f.ours.mesh_ms <= within},
      {"#{r.pods} pods started at once: no pod fails to connect to all others",
       "#{f.ours.per_pod_ms.unmeshed}", f.ours.per_pod_ms.unmeshed == 0},
      {"rolling update of #{r.pods} pods, maxSurge #{r.surge}: completes", completed(ro.ours),
       ro.ours.completed},
      {"rolling update of #{r.pods} pods, maxSurge #{r.surge}: 0 links lost between live listed pods",
       "#{ro.ours.lost_links}", ro.ours.lost_links == 0}
    ]
  end

  @doc """
  Ours ÷ the baseline for the chart's ratio panel, `[{label, ratio}]`: below 1 is ours being
  faster or cheaper. A comparison where either side has no number, or zero (which a log scale
  cannot show), is left out, and so is the rolling update's time when the baseline's stopped.
  """
  @spec ratios(map()) :: [{String.t(), float()}]
  def ratios(%{skipped: _}), do: []

  def ratios(r) do
    f = r.formation
    ro = r.rollout

    [
      {"#{r.pods} pods: full mesh / baseline", f.ours.mesh_ms, f.baseline.mesh_ms},
      {"#{r.pods} pods: per pod / baseline", f.ours.per_pod_ms.median,
       f.baseline.per_pod_ms.median},
      {"#{r.pods} pods: strategy CPU / baseline", strategy_ms_per_s(f.ours.cpu),
       strategy_ms_per_s(f.baseline.cpu)},
      {"#{r.pods} pods: steady DNS qps / baseline", f.ours.steady_qps, f.baseline.steady_qps},
      {"rolling update: total / baseline", ro.ours.total_ms,
       if(ro.baseline.completed, do: ro.baseline.total_ms)}
    ]
    |> Enum.flat_map(fn
      {label, ours, base} when is_number(ours) and is_number(base) and ours > 0 and base > 0 ->
        [{label, ours / base}]

      _ ->
        []
    end)
  end

  # The kernel's one ARP table for all namespaces, raised for the run when it was too small.
  defp neighbours(%{neighbour_table: %{raised: true, from: [_, from], to: [_, to]}}) do
    " The host's ARP table, which every namespace shares, was allowed #{to} entries for the " <>
      "run instead of #{from} (`gc_thresh3`): past it, new neighbours stay unresolved and " <>
      "connects hang, and a mesh of n pods needs about n² entries."
  end

  defp neighbours(%{neighbour_table: %{raised: false, error: error}}),
    do: " The host's ARP table could not be enlarged (#{error}): large meshes may not form."

  defp neighbours(_r), do: ""

  defp row(label, ours, baseline, ratio), do: "| #{label} | #{ours} | #{baseline} | #{ratio} |"

  defp rounds(1), do: "1 round"
  defp rounds(n), do: "#{n} rounds"

  defp strategy_ms_per_s(%{busy_us_per_poll: busy, runtime_us_per_poll: runtime, polls_per_s: p})
       when is_number(busy) and is_number(runtime) and is_number(p),
       do: (busy + runtime) * p / 1000

  defp strategy_ms_per_s(_cpu), do: nil

  defp ratio(a, b), do: Stats.ratio(a, b)

  # The time of an update that replaced every pod; one that stopped has none to compare.
  defp finished_ms(%{completed: true, total_ms: ms}), do: ms
  defp finished_ms(_rollout), do: nil

  defp completed(%{completed: true}), do: "yes"

  defp completed(%{steps_done: done, steps: steps, stopped: why}),
    do: "no: #{done} of #{steps} steps (#{why})"

  defp spread(%{median: nil}), do: "n/a"

  defp spread(%{median: m, p90: p, max: x}),
    do: "#{secs(m)} / #{secs(p)} / #{secs(x)}"

  defp per_pod(qps, r) when is_number(qps), do: num(qps / r.pods * r.interval_ms / 1000)
  defp per_pod(_, _), do: "n/a"

  defp percent(nil), do: "n/a"
  defp percent(share), do: "#{round(share * 100)} %"

  defp qps(nil), do: "n/a"
  defp qps(x), do: "#{Float.round(x * 1.0, 1)}"

  defp num(nil), do: "n/a"
  defp num(x) when is_float(x), do: "#{Float.round(x, 2)}"
  defp num(x), do: "#{x}"

  defp secs(ms) when is_number(ms), do: "#{Float.round(ms / 1000, 2)} s"
  defp secs(_), do: "n/a"

  defp baseline_losses(%{baseline: %{lost_links: lost}}) when is_integer(lost) and lost > 0 do
    "\nThe baseline's pods did not record why their strategies dropped live pods. The likely " <>
      "cause is in the section on the VM's DNS cache above: once that cache is full, " <>
      "`:inet_res.getbyname/2` answers with part of the SRV set, and the baseline, like " <>
      "DNSSRV, disconnects every known node missing from its answer.\n"
  end

  defp baseline_losses(_rollout), do: ""

  defp lost_samples(ro) do
    lines =
      for {key, name} <- [ours: "ClusterSRV.Strategy", baseline: "sequential baseline"],
          {label, node, at} <- ro[key].lost_sample,
          do: "- #{name}: #{label} lost `#{node}` #{secs(at)} into the update"

    case lines do
      [] -> ""
      lines -> "\nThe first links lost:\n\n" <> Enum.join(lines, "\n") <> "\n"
    end
  end
end
