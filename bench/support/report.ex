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

  @doc """
  Writes what a `BENCH_ONLY` run measured to `_build/bench/partial.md`, and prints it: the
  sections that have a report of their own as markdown, the others as terms. `latest.md` is
  left alone, since it holds whole runs only.
  """
  def write_partial!(r) do
    formats = [
      scale: &ClusterSRV.Bench.ScaleReport.markdown/1,
      dns_load: &ClusterSRV.Bench.DNSLoadReport.markdown/1
    ]

    sections =
      for {key, result} <- Map.drop(r, [:quick, :machine]) do
        case formats[key] do
          nil ->
            "## #{key}\n\n```elixir\n#{inspect(result, pretty: true, limit: :infinity)}\n```\n"

          format ->
            format.(result)
        end
      end

    targets =
      for {key, result} <- r,
          module = targets_of(key),
          module != nil,
          {t, v, ok} <- module.targets(result),
          do: "| #{t} | #{v} | #{if ok, do: "yes", else: "**no**"} |"

    m = r.machine

    markdown = """
    # Benchmark results, some sections only (`BENCH_ONLY`)

    #{if r.quick, do: "**Quick run (`BENCH_QUICK=1`).**\n", else: ""}\
    Taken #{m.date} on #{m.nproc} CPUs (#{m.cpu}), OTP #{m.otp}, Elixir #{m.elixir}, #{m.bind}.

    | target | this run | met |
    |---|---|---|
    #{Enum.join(targets, "\n")}

    #{Enum.join(sections, "\n")}\
    """

    path = "_build/bench/partial.md"
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, markdown)
    IO.puts("\nWrote #{path}\n")
    IO.puts(markdown)
  end

  defp targets_of(:scale), do: ClusterSRV.Bench.ScaleReport
  defp targets_of(:dns_load), do: ClusterSRV.Bench.DNSLoadReport
  defp targets_of(_key), do: nil

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
    when the answer is truncated, with a new connection each time). In the same rounds, the
    dirty I/O experiment (the whole lookup blocking a dirty I/O thread: one UDP exchange with one
    server, none of the resolver's resends, other servers or TCP) took #{us(lat[3].dirty)} µs
    for 3 records: #{Stats.ratio(lat[3].inet_res.median, lat[3].dirty.median)} faster than
    `:inet_res`, #{Stats.ratio(lat[3].dirty.median, lat[3].floor.median)} the floor.

    ### The gap to the floor, step by step (3 records)

    #{gap_table(r)}

    ### Where the time of a 3-record lookup goes, in the VM

    #{probe_table(r.probe)}

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

    ## 1b. Cold start: from `start_link` to the first connect (µs, medians)

    | | ClusterSRV.Strategy | sequential baseline (DNSSRV's algorithm) | ours ÷ baseline |
    |---|---|---|---|
    #{cold_rows(r.cold_start)}

    #{r.cold_start[ClusterSRV.Strategy].vms} fresh VMs per strategy and mode, alternating, each
    starting the topology under a supervisor built as libcluster's `Cluster.Supervisor` builds it,
    resolving through the VM's own settings (`ERL_INETRC`); warm figures from 20 more starts in
    each VM. The baseline's warm starts are answered by the VM's own DNS cache (`inet_db`, which
    `:inet_res.getbyname/2` consults first and fills for the answer's TTL), so they send no query;
    ours ask the server every time.

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

    ## 4. Per-poll cost of the strategy, #{r.poll.pods} pods listed (near the DNS message limit), nothing changed

    | per poll | ClusterSRV.Strategy | sequential baseline (`:inet_res`) | baseline ÷ ours |
    |---|---|---|---|
    | the lookup alone, median (µs) | #{Stats.round(r.poll.ours.lookup_us)} | #{Stats.round(r.poll.baseline.lookup_us)} | #{Stats.ratio(r.poll.baseline.lookup_us, r.poll.ours.lookup_us)} |
    | time on a scheduler (µs) | #{r.poll.ours.busy_us} | #{r.poll.baseline.busy_us} | #{Stats.ratio(r.poll.baseline.busy_us, r.poll.ours.busy_us)} |
    | reductions | #{r.poll.ours.reductions} | #{r.poll.baseline.reductions} | #{Stats.ratio(r.poll.baseline.reductions, r.poll.ours.reductions)} |
    | heap allocated (bytes) | #{r.poll.ours.bytes} | #{r.poll.baseline.bytes} | #{Stats.ratio(r.poll.baseline.bytes, r.poll.ours.bytes)} |

    Polls measured: #{r.poll.ours.polls} and #{r.poll.baseline.polls}, by tracing the strategy
    process. The baseline follows libcluster's DNSSRV algorithm: its lookup runs inside the
    strategy process. The lookup alone is timed outside the strategies, alternating: ours is the
    native discovery a poll makes (answer fetched over UDP then TCP, targets named, on the
    runtime's thread), the baseline's its `:inet_res` resolver, in the calling process.

    ### What `:inet_res.getbyname/2` returns once the VM's DNS cache is full

    #{inet_cache(r.inet_cache)}

    #{ClusterSRV.Bench.ScaleReport.markdown(r.scale)}

    #{ClusterSRV.Bench.DNSLoadReport.markdown(r.dns_load)}

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

    cold = r.cold_start
    ours_cold = cold[ClusterSRV.Strategy]
    base_cold = cold[ClusterSRV.Bench.SequentialSRV]

    cold_targets = [
      {"cold start, first in a fresh VM (code loaded on demand) ≤ the baseline's",
       "#{ms(ours_cold.first)} vs #{ms(base_cold.first)}", ours_cold.first <= base_cold.first},
      {"cold start, first in a fresh VM (code preloaded, as a release) ≤ the baseline's",
       "#{ms(ours_cold.first_preloaded)} vs #{ms(base_cold.first_preloaded)}",
       ours_cold.first_preloaded <= base_cold.first_preloaded},
      {"cold start, warm (the baseline's answer from the VM's DNS cache) ≤ the baseline's",
       "#{ms(ours_cold.warm)} vs #{ms(base_cold.warm)}", ours_cold.warm <= base_cold.warm},
      {"cold start, warm, both asking the server ≤ the baseline's",
       "#{ms(ours_cold.warm_uncached)} vs #{ms(base_cold.warm_uncached)}",
       ours_cold.warm_uncached <= base_cold.warm_uncached}
    ]

    poll_targets = [
      {"per poll at #{r.poll.pods} pods: fewer reductions than the baseline",
       "#{Stats.ratio(r.poll.baseline.reductions, r.poll.ours.reductions)} fewer",
       r.poll.ours.reductions < r.poll.baseline.reductions},
      {"per poll at #{r.poll.pods} pods: less heap allocated than the baseline",
       "#{Stats.ratio(r.poll.baseline.bytes, r.poll.ours.bytes)} less",
       r.poll.ours.bytes < r.poll.baseline.bytes}
    ]

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
      cold_targets ++
      poll_targets ++
      conv ++
      ClusterSRV.Bench.ScaleReport.targets(r.scale) ++
      ClusterSRV.Bench.DNSLoadReport.targets(r.dns_load) ++
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

  @modes %{
    "raw_udp" => "bare UDP round trip, one kept socket",
    "raw_fresh_socket" =>
      "bare UDP, a fresh random-port socket per query (bound, then connected: 5 calls)",
    "raw_fresh_socket_3_calls" =>
      "bare UDP, a fresh socket made as ours are (non-blocking, bound by connect: 3 calls)",
    "hickory_udp_stream" => "hickory's UDP client stream",
    "cluster_srv_lookup" =>
      "our lookup (our transport, hickory-proto messages, records), inside the runtime",
    "cluster_srv_lookup_begun_outside" =>
      "our lookup as the NIF runs it now: sent from the calling thread, then the runtime",
    "cluster_srv_lookup_handed_off" =>
      "our lookup as the NIF ran it before: handed whole to the runtime from outside",
    "decode_large_answer" =>
      "decoding the 500-record answer and making its records, alone (CPU only)",
    "tcp_kept_connection" => "one TCP query on a connection kept open",
    "tcp_fresh_connection" => "one TCP query on a connection of its own (connect, query, close)",
    "cluster_srv_lookup_large" =>
      "our lookup of 500 records (UDP, truncated, then TCP on a fresh connection)",
    "hickory_resolver_1_worker" => "hickory-resolver's `Resolver`, 1 worker",
    "hickory_resolver_2_workers" => "hickory-resolver's `Resolver`, 2 workers"
  }

  defp describe_mode(mode), do: Map.get(@modes, mode, mode)

  defp tcp_mode?(%{mode: mode}),
    do:
      mode in ~w(tcp_kept_connection tcp_fresh_connection cluster_srv_lookup_large decode_large_answer)

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

  # native − floor, split into parts that sum to it: the kernel's price of a fresh socket, our
  # lookup's own work, the handoff to the runtime's thread (all three in Rust, from the exchange
  # table), and what is left: the BEAM's part of our path (the NIF, the terms, the message and
  # the scheduler's wake-up) beyond the BEAM's part of the floor's.
  defp gap_table(r) do
    ex = Map.new(r.exchange, &{&1.mode, &1.median})
    native = r.latency[3].native.median
    floor = r.latency[3].floor.median
    inet_res = r.latency[3].inet_res.median

    needed =
      ~w(raw_udp raw_fresh_socket_3_calls cluster_srv_lookup cluster_srv_lookup_begun_outside)

    if Enum.all?(needed, &Map.has_key?(ex, &1)) do
      kernel = ex["raw_fresh_socket_3_calls"] - ex["raw_udp"]
      ours = ex["cluster_srv_lookup"] - ex["raw_fresh_socket_3_calls"]
      handoff = ex["cluster_srv_lookup_begun_outside"] - ex["cluster_srv_lookup"]
      beam = native - ex["cluster_srv_lookup_begun_outside"] - (floor - ex["raw_udp"])
      gap = native - floor
      share = fn part -> if gap > 0, do: "#{round(100 * part / gap)} %", else: "n/a" end

      """
      | step | µs | share of the gap |
      |---|---|---|
      | the raw floor, in the VM | #{Stats.round(floor)} | |
      | + the kernel: a fresh random-port socket per query (made, connected, closed) | #{Stats.round(kernel)} | #{share.(kernel)} |
      | + our lookup's work: answer checks, decoding, records, timers | #{Stats.round(ours)} | #{share.(ours)} |
      | + the handoff to the runtime's thread | #{Stats.round(handoff)} | #{share.(handoff)} |
      | + the BEAM: the NIF call, terms, the reply from another thread waking a scheduler (beyond what the floor's `:gen_udp` pays) | #{Stats.round(beam)} | #{share.(beam)} |
      | = the native lookup, in the VM | #{Stats.round(native)} | 100 % |

      The first three parts are the Rust exchange table's differences (below), the last what
      remains: they sum to the gap by construction. The 1.5× target would allow
      #{Stats.round(floor * 1.5)} µs; 2× faster than `:inet_res` #{Stats.round(inet_res / 2)} µs,
      #{Stats.ratio(inet_res / 2, floor)} the floor, where the kernel's fresh socket alone takes
      #{Stats.ratio(floor + kernel, floor)}.
      """
    else
      "(the exchange table lacks a mode the steps need)"
    end
  end

  defp probe_table(probe) do
    n = probe.native
    f = probe.floor

    """
    | step (median µs) | native | raw floor |
    |---|---|---|
    | the NIF call | #{Stats.round(n.nif_call)} | |
    | the query sent, on the caller's scheduler (socket made, connected, query sent) | #{Stats.round(n.sent)} | #{Stats.round(f.send)} (sent on the kept socket) |
    | the runtime's thread takes over (overlaps the server's answer) | #{Stats.round(n.runtime_takes_over)} | |
    | the answer awaited, read, checked and decoded into records | #{Stats.round(n.answered)} | #{Stats.round(f.receive)} (awaited and received) |
    | the records made into terms | #{Stats.round(n.terms)} | |
    | the reply reaches the caller (a scheduler woken from another thread) | #{Stats.round(n.reply)} | |
    | whole lookup | #{Stats.round(n.total)} | #{Stats.round(f.total)} |

    From the `bench-probe` build's `probe_lookup`, whose reply carries the time of each step
    (#{probe.n} lookups, alternating with the floor's). Medians of each step do not add up to
    the median of the whole.
    """
  end

  defp inet_cache(c) do
    rounds = Enum.map_join(c.rounds, ", ", fn {first, again} -> "#{first} then #{again}" end)

    """
    A service of #{c.listed} pods, looked up with `:inet_res.getbyname/2` (libcluster DNSSRV's
    lookup) in a fresh VM, then each target's A record with `:inet_res`, then the service
    again, 8 rounds 0.7 s apart: #{rounds} records. The VM's cache (`inet_db`) holds 100
    records by default and, when full, drops its least recently used tenth record by record,
    so part of an SRV set can stay cached, and getbyname answers with that part: here as few
    as #{c.fewest} of #{c.listed}. A strategy that disconnects every known node missing from
    its answer, as DNSSRV and the sequential baseline do, then drops live pods. Ours keeps no
    cache and asks the server at every poll.
    """
  end

  defp cold_rows(cold) do
    ours = cold[ClusterSRV.Strategy]
    base = cold[ClusterSRV.Bench.SequentialSRV]

    [
      {"first start in a fresh VM, code loaded on demand (`iex -S mix`, `mix run`)", :first},
      {"first start in a fresh VM, code preloaded (a release)", :first_preloaded},
      {"warm: later starts in the same VM", :warm},
      {"warm, the VM's DNS cache cleared before each start (both ask the server)",
       :warm_uncached},
      {"modules the first start loaded (code loaded on demand)", :modules_loaded}
    ]
    |> Enum.map_join("\n", fn {label, key} ->
      "| #{label} | #{Stats.round(ours[key])} | #{Stats.round(base[key])} | " <>
        "#{Stats.ratio(ours[key], base[key])} |"
    end)
  end

  defp ms(us), do: "#{Float.round(us / 1000, 2)} ms"

  defp dead_counts(r),
    do: r.convergence |> Map.keys() |> Enum.map(&elem(&1, 1)) |> Enum.uniq() |> Enum.sort()

  defp us(%{median: m, p90: p}), do: "#{Stats.round(m)} (p90 #{Stats.round(p)})"
  defp secs(ms) when is_integer(ms), do: "#{Float.round(ms / 1000, 2)} s"
  defp secs(:over_100_s), do: "> 100 s"
  defp secs(nil), do: "n/a"

  defp chart!(r) do
    latency = Path.join(@dir, "latency.dat")
    convergence = Path.join(@dir, "convergence.dat")
    ratios = Path.join(@dir, "ratios.dat")

    File.write!(latency, """
    # answer native inet_res floor (median µs)
    "3 records" #{r.latency[3].native.median} #{r.latency[3].inet_res.median} #{r.latency[3].floor.median}
    "500 records" #{r.latency[500].native.median} #{r.latency[500].inet_res.median} #{r.latency[500].floor.median}
    """)

    File.write!(
      ratios,
      "# label ours/theirs\n" <>
        Enum.map_join(ratios(r), "", fn {label, value} -> ~s|"#{label}" #{value}\n| end)
    )

    File.write!(
      convergence,
      "# dead_pods ours_s baseline_s (100 = did not converge within 100 s)\n" <>
        Enum.map_join(dead_counts(r), "", fn k ->
          "#{k} #{plot_secs(r.convergence[{ClusterSRV.Strategy, k}])} #{plot_secs(r.convergence[{ClusterSRV.Bench.SequentialSRV, k}])}\n"
        end)
    )

    script = """
    set terminal pngcairo size 1800,520 font 'sans,10'
    set output '#{Path.join(@dir, "latest.png")}'
    set multiplot layout 1,3
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
    set title 'Ours ÷ the alternative, this run (below 1: ours is better)'
    set style data histograms
    set style histogram clustered gap 1
    set style fill solid 0.8 border -1
    set logscale y
    set yrange [0.01:*]
    set ylabel 'ratio (log scale)'
    set xlabel ''
    set xtics rotate by -40 left
    # Room for the last rotated labels, which run past the plot's right edge.
    set rmargin 24
    set key off
    plot '#{ratios}' using 2:xtic(1) title 'ours ÷ theirs', 1 with lines lw 2 lc rgb 'black' notitle
    unset multiplot
    """

    script_path = Path.join(@dir, "chart.gnuplot")
    File.write!(script_path, script)
    {output, status} = System.cmd("gnuplot", [script_path], stderr_to_stdout: true)
    if status != 0, do: IO.puts("gnuplot failed: #{output}")
  end

  # Ours ÷ the alternative for each comparison of the run: time, reductions or bytes.
  defp ratios(r) do
    lat = r.latency
    cold = r.cold_start
    ours_cold = cold[ClusterSRV.Strategy]
    base_cold = cold[ClusterSRV.Bench.SequentialSRV]

    [
      {"lookup, 3 records / inet_res", lat[3].native.median / lat[3].inet_res.median},
      {"lookup, 3 records / floor", lat[3].native.median / lat[3].floor.median},
      {"lookup, 500 records / inet_res", lat[500].native.median / lat[500].inet_res.median},
      {"lookup, 500 records / floor", lat[500].native.median / lat[500].floor.median},
      {"cold start, fresh VM / baseline", ours_cold.first / base_cold.first},
      {"cold start, preloaded / baseline", ours_cold.first_preloaded / base_cold.first_preloaded},
      {"poll at #{r.poll.pods} pods, reductions / baseline",
       r.poll.ours.reductions / r.poll.baseline.reductions},
      {"poll at #{r.poll.pods} pods, heap / baseline", r.poll.ours.bytes / r.poll.baseline.bytes}
    ] ++
      ClusterSRV.Bench.ScaleReport.ratios(r.scale) ++
      ClusterSRV.Bench.DNSLoadReport.ratios(r.dns_load)
  end

  defp plot_secs(ms) when is_integer(ms), do: Float.round(ms / 1000, 2)
  defp plot_secs(_), do: 100
end
