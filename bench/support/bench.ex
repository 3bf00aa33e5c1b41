defmodule ClusterSRV.Bench do
  @moduledoc """
  `make bench`: measurements taken side by side in one run, on one BIND, reported as ratios.

  Every section alternates the things it compares round by round and quotes medians, because
  these machines are noisy. Nothing here asserts: the report states each target and whether the
  run met it. `BENCH_QUICK=1` shortens every section (for trying the bench itself), and
  `BENCH_ONLY=<section>,...` runs only those sections (by their keys in `sections/2`), printing
  their results and writing them to `_build/bench/partial.md`, not to `bench/results`.
  """

  alias ClusterSRV.Bench.{
    Clients,
    ColdStart,
    DNSLoad,
    InetCache,
    PollTrace,
    Probe,
    Report,
    Scale,
    SequentialSRV,
    Stats
  }

  alias ClusterSRV.Harness.{DNS, LocalCluster, Pod, Zone}

  @small "myapp-headless.default.svc.cluster.local."
  @big "big-headless.default.svc.cluster.local."
  @huge "kilo.default.svc.cluster.local."
  @clients [:native, :inet_res, :floor]
  # The small answer also runs the dirty I/O experiment (see ClusterSRV.Bench.Clients).
  @small_clients [:native, :inet_res, :floor, :dirty]

  def run do
    quick? = System.get_env("BENCH_QUICK") in ["1", "true"]
    only = only!(System.get_env("BENCH_ONLY"))
    System.put_env("CLUSTER_SRV_RUN", "bench#{System.os_time()}")

    services = [
      service("myapp-headless", 3),
      service("big-headless", 500),
      service("kilo", 1_000),
      service("cached", 55)
    ]

    dns = DNS.start!(services: services)

    try do
      results =
        for {key, title, fun} <- sections(dns, quick?), only == nil or key in only, into: %{} do
          {key, section(title, fun)}
        end

      results = Map.merge(results, %{quick: quick?, machine: machine()})
      if only, do: Report.write_partial!(results), else: Report.write!(results)
    after
      DNS.stop(dns)
    end
  end

  # Every section, in the order they run: `{key, title, fun}`.
  defp sections(dns, quick?) do
    [
      # First, so that the RSS it watches holds nothing from the other sections.
      {:memory, "memory and atoms", fn -> memory(dns, quick?) end},
      {:latency, "lookup latency", fn -> latency(dns, quick?) end},
      {:probe, "where the time goes (VM)", fn -> Probe.run(dns, @small, quick?) end},
      {:exchange, "where the time goes (Rust)", fn -> exchange(dns, quick?) end},
      {:cold_start, "cold start", fn -> ColdStart.run(dns, quick?) end},
      {:throughput, "throughput", fn -> throughput(dns, quick?) end},
      {:vm, "VM impact", fn -> vm_impact(dns, quick?) end},
      {:poll, "per-poll cost of the strategy", fn -> poll_cost(dns, quick?) end},
      {:inet_cache, "the VM's DNS cache", fn -> InetCache.run(dns, "cached", 55) end},
      {:convergence, "convergence", fn -> convergence(dns, quick?) end},
      {:scale, "scale (namespace cluster)", fn -> Scale.run(quick?) end},
      {:dns_load, "DNS load at scale (namespace cluster, counting proxy)",
       fn -> DNSLoad.run(quick?) end}
    ]
  end

  # BENCH_ONLY=dns_load,scale runs those sections alone, for trying one; nil runs them all.
  defp only!(nil), do: nil
  defp only!(""), do: nil

  defp only!(names) do
    known = for {key, _, _} <- sections(nil, true), do: Atom.to_string(key)
    wanted = names |> String.split([",", " "], trim: true) |> Enum.uniq()

    case wanted -- known do
      [] ->
        Enum.map(wanted, &String.to_atom/1)

      unknown ->
        raise ArgumentError,
              "BENCH_ONLY names no section #{Enum.join(unknown, ", ")}; the sections are " <>
                Enum.join(known, ", ")
    end
  end

  defp section(title, fun) do
    IO.puts("==> #{title}")
    {elapsed, result} = :timer.tc(fun)
    IO.puts("    done in #{Float.round(elapsed / 1_000_000, 1)} s")
    result
  end

  defp service(name, count) do
    pods = for i <- 0..(count - 1), do: {"#{name}-#{i}", {127, 1, div(i, 250), rem(i, 250) + 1}}
    Zone.service(name, "default", pods: pods)
  end

  # -- 1. Latency -------------------------------------------------------------------------------

  @doc false
  def latency(dns, quick?) do
    {rounds, per_small, per_big} = if quick?, do: {3, 50, 5}, else: {12, 250, 30}

    for {size, name, per_round, kinds} <- [
          {3, @small, per_small, @small_clients},
          {500, @big, per_big, @clients}
        ],
        into: %{} do
      clients = Map.new(kinds, &{&1, Clients.prepare(&1, name, dns.port)})
      for {_, client} <- clients, _ <- 1..max(per_round, 10), do: Clients.run(client)

      samples =
        for _round <- 1..rounds, client <- Enum.shuffle(kinds), reduce: %{} do
          acc ->
            times =
              for _ <- 1..per_round, do: Stats.time_us(fn -> Clients.run(clients[client]) end)

            Map.update(acc, client, times, &(times ++ &1))
        end

      summary =
        Map.new(samples, fn {client, times} ->
          {client,
           %{median: Stats.median(times), p90: Stats.percentile(times, 90), n: length(times)}}
        end)

      IO.puts(
        "    #{size} records: " <>
          Enum.map_join(kinds, ", ", &"#{&1} #{Stats.round(summary[&1].median)} µs")
      )

      {size, summary}
    end
  end

  # -- 1b. The Rust-side decomposition -----------------------------------------------------------

  @doc false
  def exchange(dns, quick?) do
    {rounds, per_round} = if quick?, do: {3, 100}, else: {10, 300}
    root = File.cwd!()
    target_dir = Path.join(root, "_build/cluster_srv_cargo")

    {_, 0} =
      System.cmd(
        "cargo",
        ~w(build --release --quiet --example exchange_latency --target-dir #{target_dir}),
        cd: root,
        stderr_to_stdout: true
      )

    binary = Path.join(target_dir, "release/examples/exchange_latency")
    args = [to_string(dns.port), @small, to_string(rounds), to_string(per_round), @big]
    {output, 0} = System.cmd(binary, args, stderr_to_stdout: true)

    for "RESULT " <> line <- String.split(output, "\n") do
      [mode, median, p90, cpu] = String.split(line)

      %{
        mode: mode,
        median: String.to_integer(median),
        p90: String.to_integer(p90),
        cpu: String.to_integer(cpu)
      }
    end
  end

  # -- 2. Throughput ----------------------------------------------------------------------------

  @doc false
  def throughput(dns, quick?) do
    {rounds, total} = if quick?, do: {2, 640}, else: {3, 3_200}

    for concurrency <- [1, 8, 64], into: %{} do
      runs =
        for _round <- 1..rounds, client <- Enum.shuffle(@clients), reduce: %{} do
          acc ->
            per_caller = div(total, concurrency)

            callers = for _ <- 1..concurrency, do: Clients.prepare(client, @small, dns.port)

            {elapsed, _} =
              :timer.tc(fn ->
                callers
                |> Task.async_stream(fn c -> for _ <- 1..per_caller, do: Clients.run(c) end,
                  max_concurrency: concurrency,
                  timeout: 120_000
                )
                |> Stream.run()
              end)

            Enum.each(callers, &Clients.close/1)
            ops = per_caller * concurrency / (elapsed / 1_000_000)
            Map.update(acc, client, [ops], &[ops | &1])
        end

      summary = Map.new(runs, fn {client, ops} -> {client, Stats.median(ops)} end)

      IO.puts(
        "    #{concurrency} callers: " <>
          Enum.map_join(@clients, ", ", &"#{&1} #{round(summary[&1])}/s")
      )

      {concurrency, summary}
    end
  end

  # -- 3. VM impact -----------------------------------------------------------------------------

  @doc false
  def vm_impact(dns, quick?) do
    count = if quick?, do: 1_000, else: 10_000

    for client <- [:native, :inet_res], into: %{} do
      prepared = Clients.prepare(client, @small, dns.port)
      for _ <- 1..200, do: Clients.run(prepared)

      :erlang.system_flag(:scheduler_wall_time, true)
      wall_before = :erlang.statistics(:scheduler_wall_time_all)
      previous = :erlang.system_monitor(self(), [{:long_schedule, 1}])

      # Eight callers, as a strategy's lookups would share the VM with other work.
      callers =
        1..8
        |> Task.async_stream(
          fn _ ->
            for _ <- 1..div(count, 8), do: Clients.run(prepared)
            self()
          end,
          timeout: 300_000
        )
        |> Enum.map(fn {:ok, pid} -> pid end)

      restore_monitor(previous)
      wall_after = :erlang.statistics(:scheduler_wall_time_all)
      events = drain_long_schedule([])

      %{reductions: reductions, words: words} =
        caller_cost(prepared, if(quick?, do: 200, else: 1_000))

      result = %{
        lookups: count,
        long_schedule: length(events),
        long_schedule_where: Enum.map(events, &describe_event(&1, callers)),
        dirty_ms: dirty_active_ms(wall_before, wall_after),
        reductions: reductions,
        bytes: words * :erlang.system_info(:wordsize)
      }

      IO.puts("    #{client}: #{inspect(result)}")
      {client, result}
    end
  end

  # Where a long_schedule event happened: the process (its initial call) and the functions it was
  # scheduled in and out at, with how long it ran. A 2-CPU machine running BIND, the tokio worker
  # and two schedulers can deschedule a scheduler thread for over 1 ms, which shows here too.
  defp describe_event({who, info}, callers) do
    process =
      cond do
        who in callers -> "a calling process"
        who == self() -> "the benchmark's own process"
        is_pid(who) -> inspect(Process.info(who, [:registered_name, :initial_call]) || who)
        true -> inspect(who)
      end

    "#{process}: #{info[:timeout]} ms, in at #{format_mfa(info[:in])}, out at #{format_mfa(info[:out])}"
  end

  defp format_mfa({m, f, a}), do: "#{inspect(m)}.#{f}/#{a}"
  defp format_mfa(other), do: inspect(other)

  defp restore_monitor({pid, options}), do: :erlang.system_monitor(pid, options)
  defp restore_monitor(:undefined), do: :erlang.system_monitor(:undefined)

  defp drain_long_schedule(acc) do
    receive do
      {:monitor, who, :long_schedule, info} -> drain_long_schedule([{who, info} | acc])
    after
      0 -> acc
    end
  end

  # Active time of the dirty schedulers between two scheduler_wall_time_all samples, in ms.
  defp dirty_active_ms(before, later) do
    normal = :erlang.system_info(:schedulers)
    dirty_cpu = :erlang.system_info(:dirty_cpu_schedulers)
    dirty_io = :erlang.system_info(:dirty_io_schedulers)
    ids = (normal + 1)..(normal + dirty_cpu + dirty_io)
    b = Map.new(before, fn {id, active, _} -> {id, active} end)
    a = Map.new(later, fn {id, active, _} -> {id, active} end)
    active = Enum.sum(for id <- ids, do: Map.get(a, id, 0) - Map.get(b, id, 0))
    Float.round(System.convert_time_unit(active, :native, :microsecond) / 1000, 2)
  end

  # Reductions and heap words one lookup costs the calling process, which does nothing else.
  defp caller_cost(prepared, count) do
    parent = self()

    pid =
      spawn(fn ->
        Clients.run(prepared)
        receive do: (:go -> :ok)
        {:reductions, before} = Process.info(self(), :reductions)
        for _ <- 1..count, do: Clients.run(prepared)
        {:reductions, later} = Process.info(self(), :reductions)
        send(parent, {:reductions, (later - before) / count})
        receive do: (:stop -> :ok)
      end)

    words =
      allocated_words(pid, fn ->
        send(pid, :go)

        receive do
          {:reductions, r} -> r
        end
      end)

    send(pid, :stop)
    %{reductions: words.result, words: words.words / count}
  end

  # Runs `fun` while tracing the garbage collections of `pid`, and returns what `fun` returned
  # and the words `pid` allocated meanwhile: the growth of its young heap between collections,
  # from a forced collection before to a forced collection after.
  defp allocated_words(pid, fun) do
    :erlang.trace(pid, true, [:garbage_collection])
    :erlang.garbage_collect(pid)
    result = fun.()
    :erlang.garbage_collect(pid)
    :erlang.trace(pid, false, [:garbage_collection])
    %{result: result, words: sum_gc_growth(nil, 0)}
  end

  # GC events come as {:trace, pid, tag, info}, or with a timestamp as {:trace_ts, ..., ts}.
  defp sum_gc_growth(last_end, total) do
    receive do
      {kind, _pid, start, info}
      when kind == :trace and start in [:gc_minor_start, :gc_major_start] ->
        sum_gc_growth(last_end, total + grown(last_end, info))

      {:trace_ts, _pid, start, info, _} when start in [:gc_minor_start, :gc_major_start] ->
        sum_gc_growth(last_end, total + grown(last_end, info))

      {:trace, _pid, finish, info} when finish in [:gc_minor_end, :gc_major_end] ->
        sum_gc_growth(info[:heap_size], total)

      {:trace_ts, _pid, finish, info, _} when finish in [:gc_minor_end, :gc_major_end] ->
        sum_gc_growth(info[:heap_size], total)
    after
      200 -> total
    end
  end

  # Heap growth since the last collection, plus the message fragments (replies delivered from
  # outside the process) that this collection merges into the heap.
  defp grown(nil, info), do: info[:mbuf_size]
  defp grown(last_end, info), do: max(info[:heap_size] - last_end, 0) + info[:mbuf_size]

  # -- 4. Per-poll cost of the strategy ---------------------------------------------------------

  @doc false
  def poll_cost(dns, quick?) do
    polls = if quick?, do: 10, else: 40
    nodes = for i <- 0..999, do: :"app@kilo-#{i}.kilo.default.svc.cluster.local"
    :persistent_term.put({__MODULE__, :connected}, nodes)

    state = %Cluster.Strategy.State{
      topology: :bench,
      connect: {__MODULE__, :never_connect, []},
      disconnect: {__MODULE__, :never_connect, []},
      list_nodes: {__MODULE__, :connected, []},
      config: [
        service: "kilo",
        namespace: "default",
        application_name: "app",
        cluster_domain: "cluster.local.",
        polling_interval: 100
      ]
    }

    ours =
      measure_polls(polls, fn ->
        config = state.config ++ [nameservers: [DNS.nameserver(dns)]]
        built = ClusterSRV.Strategy.build!(%{state | config: config})
        GenServer.start(ClusterSRV.Strategy, built)
      end)

    baseline =
      measure_polls(polls, fn ->
        resolver = inet_res_getbyname(dns.port)
        config = state.config ++ [resolver: resolver]

        GenServer.start(SequentialSRV, %{state | config: config, meta: MapSet.new(nodes)})
      end)

    lookup = lookup_time(dns, if(quick?, do: 10, else: 40))
    ours = Map.put(ours, :lookup_us, lookup.ours)
    baseline = Map.put(baseline, :lookup_us, lookup.baseline)

    IO.puts("    ours #{inspect(ours)}")
    IO.puts("    baseline #{inspect(baseline)}")
    %{ours: ours, baseline: baseline, pods: length(nodes)}
  end

  # The lookup of each poll alone, alternating: ours (the native discovery the strategy polls
  # with: the answer fetched, its targets named, on the runtime) and the baseline's (its
  # resolver function, in the calling process). Medians in µs.
  defp lookup_time(dns, count) do
    {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: [DNS.nameserver(dns)])
    domain = String.trim_trailing(@huge, ".")
    sources = [{@huge, :srv, "app", domain, :hostname}]
    getbyname = inet_res_getbyname(dns.port)

    ours = fn ->
      ref = ClusterSRV.Resolver.async_discover_all(resolver, sources, 1_000)

      receive do
        {:cluster_srv_lookup, ^ref, {:ok, [{:ok, %{nodes: [_ | _]}}]}} -> :ok
      after
        10_000 -> raise "the native discovery of #{@huge} failed"
      end
    end

    theirs = fn ->
      {:ok, {:hostent, _, _, :srv, _, [_ | _]}} = getbyname.(String.to_charlist(@huge))
    end

    samples =
      for _ <- 1..count, kind <- Enum.shuffle([:ours, :baseline]), reduce: %{} do
        acc ->
          us = Stats.time_us(if kind == :ours, do: ours, else: theirs)
          Map.update(acc, kind, [us], &[us | &1])
      end

    %{ours: Stats.median(samples.ours), baseline: Stats.median(samples.baseline)}
  end

  @doc false
  def connected, do: :persistent_term.get({__MODULE__, :connected})
  @doc false
  def never_connect(node), do: raise("nothing changed, yet #{node} was connected")

  # libcluster's default resolver, :inet_res.getbyname(name, :srv), pointed at the bench's BIND:
  # the same query and the same hostent, built from :inet_res.resolve with a nameserver.
  defp inet_res_getbyname(port) do
    fn name ->
      case :inet_res.resolve(name, :in, :srv, nameservers: [{{127, 0, 0, 1}, port}]) do
        {:ok, msg} ->
          entries =
            for rr <- :inet_dns.msg(msg, :anlist),
                :inet_dns.rr(rr, :type) == :srv,
                do: :inet_dns.rr(rr, :data)

          {:ok, {:hostent, name, [], :srv, length(entries), entries}}

        {:error, reason} ->
          {:error, reason}
      end
    end
  end

  # Traces the strategy process: its time on a scheduler, reductions and heap growth per poll.
  defp measure_polls(polls, start) do
    {:ok, pid} = start.()
    # Let the first polls (and their atoms) pass.
    Process.sleep(500)
    {:reductions, reductions_before} = Process.info(pid, :reductions)

    measured = allocated_words(pid, fn -> PollTrace.collect(pid, polls, 60_000) end)

    {:reductions, reductions_after} = Process.info(pid, :reductions)
    Process.exit(pid, :kill)
    PollTrace.flush()
    {busy_native, count} = measured.result

    %{
      polls: count,
      busy_us:
        Float.round(System.convert_time_unit(busy_native, :native, :nanosecond) / 1000 / count, 1),
      reductions: div(reductions_after - reductions_before, count),
      bytes: div(measured.words * :erlang.system_info(:wordsize), count)
    }
  end

  # -- 5. Memory and atoms ----------------------------------------------------------------------

  @doc false
  def memory(dns, quick?) do
    count = if quick?, do: 10_000, else: 100_000
    prepared = Clients.prepare(:native, @small, dns.port)

    1..16
    |> Task.async_stream(fn _ -> for _ <- 1..div(count, 160), do: Clients.run(prepared) end)
    |> Stream.run()

    settle()
    rss_before = rss_kb()
    atoms_before = :erlang.system_info(:atom_count)

    1..16
    |> Task.async_stream(fn _ -> for _ <- 1..div(count, 16), do: Clients.run(prepared) end,
      timeout: 600_000
    )
    |> Stream.run()

    settle()
    rss_after = rss_kb()
    atoms_after = :erlang.system_info(:atom_count)

    result = %{
      lookups: count,
      rss_before_kb: rss_before,
      rss_after_kb: rss_after,
      rss_growth_kb: rss_after - rss_before,
      atoms_before: atoms_before,
      atoms_after: atoms_after
    }

    IO.puts("    #{inspect(result)}")
    result
  end

  defp settle do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    Process.sleep(200)
  end

  defp rss_kb do
    "/proc/self/status"
    |> File.read!()
    |> then(&Regex.run(~r/VmRSS:\s+(\d+) kB/, &1))
    |> List.last()
    |> String.to_integer()
  end

  # -- 6. Convergence ---------------------------------------------------------------------------

  @interval 2_000

  @doc false
  def convergence(dns, quick?) do
    ks = if quick?, do: [0, 3], else: [0, 3, 10]

    for strategy <- [ClusterSRV.Strategy, SequentialSRV], k <- ks, into: %{} do
      ms = converge(dns, strategy, k)
      IO.puts("    #{inspect(strategy)} with #{k} dead pods: #{inspect(ms)} ms")
      {{strategy, k}, ms}
    end
  end

  # 10 live pods meshed, `k` dead pods listed in DNS, then one new pod: the time from the new
  # pod's start until it sees all 10 and all 10 see it. The dead pods' names (myapp@dead-N...)
  # sort before the live ones' (myapp@myapp-N...), in DNS answers and in atom order, so a loop
  # that connects one node at a time meets them first: the case the comparison is about.
  defp converge(dns, strategy, k) do
    cluster =
      LocalCluster.start!(
        dns: dns,
        service: "conv-#{System.unique_integer([:positive])}",
        app: "myapp",
        polling_interval: @interval,
        strategy: strategy,
        config: [timeout: 500, attempts: 1]
      )

    try do
      {cluster, _} = LocalCluster.add_pods(cluster, 10)
      {:ok, _} = LocalCluster.await_mesh(cluster, 60_000)
      cluster = LocalCluster.add_dead(cluster, k)
      # Let every pod's strategy meet the dead pods before the new one starts.
      Process.sleep(@interval + 500)
      {cluster, [new]} = LocalCluster.add_pods(cluster, 1)
      ready = Pod.info(new).ready_at

      case LocalCluster.await_mesh(cluster, 100_000) do
        {:ok, _} -> System.monotonic_time(:millisecond) - ready
        {:error, _} -> :over_100_s
      end
    after
      LocalCluster.stop(cluster)
    end
  end

  @doc false
  def convergence_interval, do: @interval

  # -- Machine ----------------------------------------------------------------------------------

  defp machine do
    cpu =
      case File.read("/proc/cpuinfo") do
        {:ok, info} ->
          case Regex.run(~r/model name\s*:\s*(.+)/, info) do
            [_, model] -> String.trim(model)
            nil -> "unknown"
          end

        _ ->
          "unknown"
      end

    {bind, _} = System.cmd("named", ["-v"], stderr_to_stdout: true)

    %{
      date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601(),
      nproc: System.cmd("nproc", []) |> elem(0) |> String.trim(),
      cpu: cpu,
      otp: :erlang.system_info(:otp_release) |> to_string(),
      elixir: System.version(),
      bind: bind |> String.split("\n") |> hd() |> String.replace(" <id:>", "") |> String.trim(),
      schedulers: :erlang.system_info(:schedulers_online)
    }
  end
end
