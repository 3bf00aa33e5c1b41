defmodule ClusterSRV.Bench.DNSLoadReport do
  @moduledoc """
  The report section of `ClusterSRV.Bench.DNSLoad`'s results: "## Scale: what the pods cost
  the cluster DNS", ours with and without jitter beside the sequential baseline, and the
  section's targets for the report's targets table, as `{description, value, met?}`.

  Nothing here measures: it only formats what `ClusterSRV.Bench.DNSLoad.run/1` returned, and
  says so when that run was skipped.
  """

  alias ClusterSRV.Bench.Stats

  # Past this, an answer needs TCP: the EDNS size the resolver advertises.
  @udp_limit 1_232

  @doc "The section, as markdown."
  @spec markdown(map()) :: String.t()
  def markdown(%{skipped: reason}) do
    """
    ## Scale: what the pods cost the cluster DNS

    Not measured in this run: #{reason}.
    """
  end

  def markdown(r) do
    %{ours: ours, no_jitter: flat, baseline: base} = r.summary

    """
    ## Scale: what the pods cost the cluster DNS

    #{if r.quick, do: "**Quick run: #{r.pods} pods, #{r.ports} ports (so that the answer needs TCP).**\n\n", else: ""}\
    #{r.pods} pods of a StatefulSet in the namespace cluster, polling every #{secs(r.interval_ms)},
    their DNS behind the counting proxy (`ClusterSRV.Harness.DNSProxy`, no faults) at
    10.96.0.10:53. The service's SRV answer, with its targets' A records, is about
    #{round(ours.bytes_per_query)} bytes: #{tcp_sized(ours.bytes_per_query)}. The same pods
    run each strategy in turn, #{rounds(r.rounds)}, alternating the order; each run starts every
    pod's strategy at the same instant, as a rollout starts its pods, then counts a window of
    #{r.window_intervals} intervals after a warm-up of #{r.warmup_intervals}.

    | | ClusterSRV.Strategy (`polling_jitter` 0.1, the default) | ClusterSRV.Strategy, `polling_jitter: 0` | sequential baseline | ours ÷ baseline |
    |---|---|---|---|---|
    #{row("DNS queries per pod and polling interval", num(ours.per_pod_interval), num(flat.per_pod_interval), num(base.per_pod_interval), Stats.ratio(ours.per_pod_interval, base.per_pod_interval))}
    #{row("… over UDP", num(ours.udp_per_pod_interval), num(flat.udp_per_pod_interval), num(base.udp_per_pod_interval), "")}
    #{row("… over TCP", num(ours.tcp_per_pod_interval), num(flat.tcp_per_pod_interval), num(base.tcp_per_pod_interval), "")}
    #{row("the busiest #{r.burst_ms} ms at the DNS (queries)#{each_label(r)}", busiest(ours), busiest(flat), busiest(base), "")}
    #{row("… the same queries spread evenly (per #{r.burst_ms} ms)", num(ours.even), num(flat.even), num(base.even), "")}
    #{row("bytes the DNS sent per pod and polling interval", bytes(ours.bytes_per_pod_interval), bytes(flat.bytes_per_pod_interval), bytes(base.bytes_per_pod_interval), Stats.ratio(ours.bytes_per_pod_interval, base.bytes_per_pod_interval))}
    #{row("bytes per answer (mean)", bytes(ours.bytes_per_query), bytes(flat.bytes_per_query), bytes(base.bytes_per_query), "")}
    #{row("the pods' strategies started within (ms)", num(ours.start_spread_ms), num(flat.start_spread_ms), num(base.start_spread_ms), "")}
    #{row("rounds in a full mesh when the window began", "#{ours.meshed_rounds} of #{ours.rounds}", "#{flat.meshed_rounds} of #{flat.rounds}", "#{base.meshed_rounds} of #{base.rounds}", "")}
    #{row("links lost between live pods in the windows", ours.lost_links, flat.lost_links, base.lost_links, "")}

    With jitter, the busiest #{r.burst_ms} ms holds #{Stats.ratio(ours.busiest, flat.busiest)}
    the queries it holds without. Without jitter, the pods' polls stay together, interval after
    interval, as one burst of up to #{r.pods} queries, which #{r.pods} VMs waking at once on
    #{r.cpus} CPUs, and the proxy's one process taking every query, can stretch past
    #{r.burst_ms} ms. Ours polls once per
    interval and asks over TCP first, since its last answer needed TCP: one query per poll. The
    baseline polls twice per interval (its two timer chains) through `:inet_res.getbyname/2`,
    whose cache answers its polls for the answer's TTL (5 s): each pod asks at the first poll
    after that, with a truncated UDP answer (`:inet_res` asks without EDNS, so within 512
    bytes) and the same question again over TCP. Its pods' caches, filled together, expire
    together, so its queries come in bursts too. That cache is also how it hands back part of a
    set (see the VM's DNS cache above).

    Counted at the proxy, which records each query when it takes it, with its transport, in a
    window of whole intervals that begins half an interval after the pods' synchronized polls,
    so that no burst straddles its edges (a pod polling once per interval counts at most one
    query per interval). The busiest #{r.burst_ms} ms is the most queries in any
    #{r.burst_ms} ms of the window. The proxy counts bytes without times, so the bytes per answer are those it sent
    since the window began divided by the queries it got meanwhile. Load average:
    #{r.load_average.before} before, #{r.load_average.after} after.#{neighbours(r)}
    """
  end

  @doc "The section's targets, for the report's targets table: `{description, value, met?}`."
  @spec targets(map()) :: [{String.t(), String.t(), boolean()}]
  def targets(%{skipped: _}), do: []

  def targets(r) do
    %{ours: ours, no_jitter: flat, baseline: base} = r.summary

    [
      {"#{r.pods} pods, a TCP-sized answer: ≤ 1.0 DNS queries per pod and polling interval in steady state",
       "#{num(ours.per_pod_interval)} (UDP #{num(ours.udp_per_pod_interval)}, TCP " <>
         "#{num(ours.tcp_per_pod_interval)}; baseline #{num(base.per_pod_interval)}; " <>
         "answer #{round(ours.bytes_per_query)} bytes)",
       ours.per_pod_interval <= 1.0 and ours.bytes_per_query > @udp_limit},
      {"#{r.pods} pods started at once: the busiest #{r.burst_ms} ms at the DNS is lower with polling_jitter 0.1 than with 0",
       "#{fmt(ours.busiest)} vs #{fmt(flat.busiest)} queries " <>
         "(#{Stats.ratio(ours.busiest, flat.busiest)})", ours.busiest < flat.busiest}
    ]
  end

  @doc "Ours ÷ the alternative for the chart's ratio panel, `[{label, ratio}]`."
  @spec ratios(map()) :: [{String.t(), float()}]
  def ratios(%{skipped: _}), do: []

  def ratios(r) do
    %{ours: ours, no_jitter: flat, baseline: base} = r.summary

    [
      {"#{r.pods} pods: DNS queries / baseline", ours.per_pod_interval, base.per_pod_interval},
      {"#{r.pods} pods: DNS bytes / baseline", ours.bytes_per_pod_interval,
       base.bytes_per_pod_interval},
      {"#{r.pods} pods: busiest 100 ms, jitter / none", ours.busiest, flat.busiest}
    ]
    |> Enum.flat_map(fn
      {label, a, b} when is_number(a) and is_number(b) and a > 0 and b > 0 -> [{label, a / b}]
      _ -> []
    end)
  end

  defp tcp_sized(size) when size > @udp_limit,
    do: "more than the #{@udp_limit} bytes the resolver advertises, so only TCP carries it"

  defp tcp_sized(_size),
    do: "it fits in the #{@udp_limit} bytes the resolver advertises, so UDP carries it"

  defp row(label, a, b, c, ratio), do: "| #{label} | #{a} | #{b} | #{c} | #{ratio} |"

  defp each_label(%{rounds: 1}), do: ""
  defp each_label(_r), do: ": median (each round)"

  defp busiest(%{busiest: median, busiest_each: [_]}), do: fmt(median)

  defp busiest(%{busiest: median, busiest_each: each}),
    do: "#{fmt(median)} (#{Enum.map_join(each, ", ", &fmt/1)})"

  defp rounds(1), do: "in 1 round"
  defp rounds(n), do: "in #{n} rounds"

  defp neighbours(%{neighbour_table: %{raised: true, from: [_, from], to: [_, to]}}),
    do: " The host's ARP table was allowed #{to} entries for the run instead of #{from}."

  defp neighbours(_r), do: ""

  defp fmt(x) when is_float(x), do: if(x == Float.round(x), do: "#{trunc(x)}", else: "#{x}")
  defp fmt(x), do: "#{x}"

  defp num(nil), do: "n/a"
  defp num(x), do: "#{Float.round(x * 1.0, 2)}"

  defp bytes(nil), do: "n/a"
  defp bytes(x), do: "#{round(x)}"

  defp secs(ms), do: "#{Float.round(ms / 1000, 1)} s"
end
