defmodule ClusterSRV.Bench.Report do
  @moduledoc """
  Writes `bench/results/latest.md` (every figure, the machine, the date, each target and whether
  this run met it) and `bench/results/latest.png` (a chart drawn with gnuplot).
  """

  alias ClusterSRV.Bench.Stats

  @dir "bench/results"

  def write!(r) do
    File.mkdir_p!(@dir)
    markdown = markdown(r)
    File.write!(Path.join(@dir, "latest.md"), markdown)
    chart!(r)
    IO.puts("\nWrote #{@dir}/latest.md and #{@dir}/latest.png\n")
    IO.puts(markdown)
  end

  defp markdown(r) do
    m = r.machine
    lat = r.latency

    """
    # Benchmark results

    #{if r.quick, do: "**Quick run (`BENCH_QUICK=1`): fewer samples than a full run.**\n", else: ""}\
    Taken #{m.date} on #{m.nproc} CPUs (#{m.cpu}), OTP #{m.otp}, Elixir #{m.elixir}, #{m.bind},
    #{m.schedulers} schedulers online. Produced by `make bench`; every comparison ran side by side
    in one run against one BIND on 127.0.0.1, in alternating rounds. Times are medians.

    ![latency and convergence](latest.png)

    ## Targets

    | target | this run | met |
    |---|---|---|
    #{targets(r) |> Enum.map_join("\n", fn {t, v, ok} -> "| #{t} | #{v} | #{if ok, do: "yes", else: "**no**"} |" end)}

    ## 1. Lookup latency (µs, median and p90)

    | answer | native | `:inet_res` | raw floor | `:inet_res` ÷ native | native ÷ floor |
    |---|---|---|---|---|---|
    #{for size <- [3, 500] do
      l = lat[size]
      "| #{size} records | #{us(l.native)} | #{us(l.inet_res)} | #{us(l.floor)} | " <> "#{Stats.ratio(l.inet_res.median, l.native.median)} | #{Stats.ratio(l.native.median, l.floor.median)} |"
    end |> Enum.join("\n")}

    The floor is a prebuilt query on an open `:gen_udp` socket, read back unparsed (over TCP too
    when the answer is truncated, with a new connection each time).

    ### Where the time of a 3-record lookup goes, in Rust without the BEAM

    | path | median µs | p90 µs | CPU µs per lookup |
    |---|---|---|---|
    #{r.exchange |> Enum.reject(&tcp_mode?/1) |> Enum.map_join("\n", &"| #{describe_mode(&1.mode)} | #{&1.median} | #{&1.p90} | #{&1.cpu} |")}

    ### The price of a TCP connection per lookup (the 500-record answer, in Rust)

    No TCP connection outlives the lookup that opened it, so a connection the server closed,
    reset or idled out can never fail a later lookup. A kept connection would save the connect:

    | path | median µs | p90 µs | CPU µs per lookup |
    |---|---|---|---|
    #{r.exchange |> Enum.filter(&tcp_mode?/1) |> Enum.map_join("\n", &"| #{describe_mode(&1.mode)} | #{&1.median} | #{&1.p90} | #{&1.cpu} |")}

    #{tcp_price(r.exchange)}

    ## 2. Throughput, 3-record answers (lookups per second)

    | callers | native | `:inet_res` | raw floor | native ÷ `:inet_res` |
    |---|---|---|---|---|
    #{for c <- [1, 8, 64] do
      t = r.throughput[c]
      "| #{c} | #{round(t.native)} | #{round(t.inet_res)} | #{round(t.floor)} | #{Stats.ratio(t.native, t.inet_res)} |"
    end |> Enum.join("\n")}

    ## 3. VM impact (3-record lookups, 8 concurrent callers)

    | | native | `:inet_res` |
    |---|---|---|
    | lookups | #{r.vm.native.lookups} | #{r.vm.inet_res.lookups} |
    | `long_schedule` events (> 1 ms) | #{r.vm.native.long_schedule} | #{r.vm.inet_res.long_schedule} |
    | dirty scheduler time used (ms) | #{r.vm.native.dirty_ms} | #{r.vm.inet_res.dirty_ms} |
    | reductions per lookup, in the caller | #{Stats.round(r.vm.native.reductions)} | #{Stats.round(r.vm.inet_res.reductions)} |
    | bytes allocated per lookup, in the caller | #{round(r.vm.native.bytes)} | #{round(r.vm.inet_res.bytes)} |

    #{long_schedule_notes(r.vm)}

    ## 4. Per-poll cost of the strategy, 500 pods, nothing changed

    | per poll | ClusterSRV.Strategy | sequential baseline (`:inet_res`) | baseline ÷ ours |
    |---|---|---|---|
    | time on a scheduler (µs) | #{r.poll.ours.busy_us} | #{r.poll.baseline.busy_us} | #{Stats.ratio(r.poll.baseline.busy_us, r.poll.ours.busy_us)} |
    | reductions | #{r.poll.ours.reductions} | #{r.poll.baseline.reductions} | #{Stats.ratio(r.poll.baseline.reductions, r.poll.ours.reductions)} |
    | heap allocated (bytes) | #{r.poll.ours.bytes} | #{r.poll.baseline.bytes} | #{Stats.ratio(r.poll.baseline.bytes, r.poll.ours.bytes)} |

    Polls measured: #{r.poll.ours.polls} and #{r.poll.baseline.polls}, by tracing the strategy
    process. The baseline follows libcluster's DNSSRV algorithm: its lookup runs inside the
    strategy process.

    ## 5. Convergence: a new pod joining 10 live pods (polling interval #{div(ClusterSRV.Bench.convergence_interval(), 1000)} s)

    | dead pods listed in DNS | ClusterSRV.Strategy | sequential baseline |
    |---|---|---|
    #{for k <- dead_counts(r) do
      "| #{k} | #{secs(r.convergence[{ClusterSRV.Strategy, k}])} | #{secs(r.convergence[{ClusterSRV.Bench.SequentialSRV, k}])} |"
    end |> Enum.join("\n")}

    Time from the new pod's start until it sees all 10 live pods and they all see it. A dead pod
    accepts connections and never answers, so each connect to it takes `net_setuptime` (7 s).

    ## 6. Memory

    | | value |
    |---|---|
    | native lookups | #{r.memory.lookups} |
    | OS RSS after warm-up | #{r.memory.rss_before_kb} kB |
    | OS RSS after the lookups | #{r.memory.rss_after_kb} kB |
    | growth | #{r.memory.rss_growth_kb} kB |
    | atoms before → after | #{r.memory.atoms_before} → #{r.memory.atoms_after} |
    """
  end

  defp targets(r) do
    lat = r.latency
    small_speedup = lat[3].inet_res.median / lat[3].native.median
    big_speedup = lat[500].inet_res.median / lat[500].native.median
    floor_ratio = lat[3].native.median / lat[3].floor.median
    interval = ClusterSRV.Bench.convergence_interval()

    conv =
      for k <- dead_counts(r), k > 0 do
        ours = r.convergence[{ClusterSRV.Strategy, k}]
        base = r.convergence[{ClusterSRV.Bench.SequentialSRV, k}]

        [
          {"with #{k} dead pods, a new pod meshes within one polling interval + 1 s (#{secs(interval + 1000)})",
           secs(ours), is_integer(ours) and ours <= interval + 1_000},
          {"the sequential baseline needs at least #{k} × 7 s with #{k} dead pods", secs(base),
           base == :over_100_s or (is_integer(base) and base >= k * 7_000)}
        ]
      end
      |> List.flatten()

    [
      {"native lookup ≥ 2× faster than `:inet_res`, 3 records",
       "#{Float.round(small_speedup, 2)}×", small_speedup >= 2},
      {"native lookup ≥ 2× faster than `:inet_res`, 500 records",
       "#{Float.round(big_speedup, 2)}×", big_speedup >= 2},
      {"native lookup within 1.5× of the raw floor, 3 records", "#{Float.round(floor_ratio, 2)}×",
       floor_ratio <= 1.5},
      {"native lookups cause 0 `long_schedule` events", "#{r.vm.native.long_schedule}",
       r.vm.native.long_schedule == 0}
    ] ++
      conv ++
      [
        {"RSS grows by under 5 MB over #{r.memory.lookups} lookups",
         "#{r.memory.rss_growth_kb} kB", r.memory.rss_growth_kb < 5 * 1024},
        {"the atom count does not grow", "#{r.memory.atoms_after - r.memory.atoms_before}",
         r.memory.atoms_after == r.memory.atoms_before}
      ]
  end

  defp long_schedule_notes(vm) do
    events =
      for client <- [:native, :inet_res],
          where <- vm[client].long_schedule_where,
          do: "- #{client}: #{where}"

    case events do
      [] ->
        "No process or port ran for over 1 ms at a time during either run."

      events ->
        "Where each `long_schedule` event happened (the process, and the functions it was " <>
          "scheduled in and out at):\n\n" <> Enum.join(events, "\n")
    end
  end

  defp describe_mode("raw_udp"), do: "bare UDP round trip, one kept socket"
  defp describe_mode("raw_fresh_socket"), do: "bare UDP, a fresh random-port socket per query"
  defp describe_mode("hickory_udp_stream"), do: "hickory's UDP client stream"
  defp describe_mode("cluster_srv_lookup"), do: "our lookup (stream + records)"

  defp describe_mode("cluster_srv_lookup_handed_off"),
    do: "our lookup, started from outside the runtime"

  defp describe_mode("tcp_kept_connection"), do: "one TCP query on a connection kept open"

  defp describe_mode("tcp_fresh_connection"),
    do: "one TCP query on a connection of its own (connect, query, close)"

  defp describe_mode("cluster_srv_lookup_large"),
    do: "our lookup of 500 records (UDP, truncated, then TCP on a fresh connection)"

  defp describe_mode("hickory_resolver_1_worker"), do: "hickory-resolver's `Resolver`, 1 worker"
  defp describe_mode("hickory_resolver_2_workers"), do: "hickory-resolver's `Resolver`, 2 workers"
  defp describe_mode(other), do: other

  defp tcp_mode?(%{mode: mode}),
    do: mode in ~w(tcp_kept_connection tcp_fresh_connection cluster_srv_lookup_large)

  defp tcp_price(exchange) do
    by_mode = Map.new(exchange, &{&1.mode, &1})

    case by_mode do
      %{"tcp_kept_connection" => kept, "tcp_fresh_connection" => fresh} ->
        "A fresh connection costs #{fresh.median - kept.median} µs more per lookup that needs " <>
          "TCP (#{Stats.ratio(fresh.median, kept.median)} the kept connection's time): a poller " <>
          "pays it once every polling interval."

      _ ->
        ""
    end
  end

  defp dead_counts(r),
    do: r.convergence |> Map.keys() |> Enum.map(&elem(&1, 1)) |> Enum.uniq() |> Enum.sort()

  defp us(%{median: m, p90: p}), do: "#{Stats.round(m)} (p90 #{Stats.round(p)})"
  defp secs(ms) when is_integer(ms), do: "#{Float.round(ms / 1000, 2)} s"
  defp secs(:over_100_s), do: "> 100 s"
  defp secs(nil), do: "n/a"

  defp chart!(r) do
    latency = Path.join(@dir, "latency.dat")
    convergence = Path.join(@dir, "convergence.dat")

    File.write!(latency, """
    # answer native inet_res floor (median µs)
    "3 records" #{r.latency[3].native.median} #{r.latency[3].inet_res.median} #{r.latency[3].floor.median}
    "500 records" #{r.latency[500].native.median} #{r.latency[500].inet_res.median} #{r.latency[500].floor.median}
    """)

    File.write!(
      convergence,
      "# dead_pods ours_s baseline_s (100 = did not converge within 100 s)\n" <>
        Enum.map_join(dead_counts(r), "", fn k ->
          "#{k} #{plot_secs(r.convergence[{ClusterSRV.Strategy, k}])} #{plot_secs(r.convergence[{ClusterSRV.Bench.SequentialSRV, k}])}\n"
        end)
    )

    script = """
    set terminal pngcairo size 1200,480 font 'sans,10'
    set output '#{Path.join(@dir, "latest.png")}'
    set multiplot layout 1,2
    set title 'SRV lookup latency, median (lower is better)'
    set style data histograms
    set style histogram clustered gap 1
    set style fill solid 0.8 border -1
    set logscale y
    set ylabel 'µs (log scale)'
    set yrange [10:*]
    set key top left
    plot '#{latency}' using 2:xtic(1) title 'ClusterSRV native', '' using 3 title ':inet\\_res', '' using 4 title 'raw UDP/TCP floor'
    unset logscale y
    set yrange [0:*]
    set style data linespoints
    set title 'New pod joins 10 pods, with dead pods in DNS'
    set xlabel 'dead pods listed in DNS'
    set ylabel 'seconds to full mesh'
    set xtics (0, 3, 10)
    set key top left
    plot '#{convergence}' using 1:2 title 'ClusterSRV.Strategy' lw 2 pt 7, '' using 1:3 title 'sequential baseline (libcluster DNSSRV algorithm)' lw 2 pt 5
    unset multiplot
    """

    script_path = Path.join(@dir, "chart.gnuplot")
    File.write!(script_path, script)
    {output, status} = System.cmd("gnuplot", [script_path], stderr_to_stdout: true)
    if status != 0, do: IO.puts("gnuplot failed: #{output}")
  end

  defp plot_secs(ms) when is_integer(ms), do: Float.round(ms / 1000, 2)
  defp plot_secs(_), do: 100
end
