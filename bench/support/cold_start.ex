defmodule ClusterSRV.Bench.ColdStart do
  @moduledoc """
  Cold start: the time from a topology's `start_link` to the strategy's first connect call,
  for `ClusterSRV.Strategy` and the sequential baseline (`ClusterSRV.Bench.SequentialSRV`, which
  follows libcluster's DNSSRV: its `init` looks up and connects before it returns), side by
  side, each in VMs of its own.

  Each sample is a fresh VM (`elixir -pa <ebin>`), as a node that has just booted. It names the
  topology's strategy in a supervisor built the way libcluster's `Cluster.Supervisor` builds
  one (a `%Cluster.Strategy.State{}` per topology, the child `{strategy, :start_link, [[state]]}`),
  and resolves through the VM's own resolver settings (`ERL_INETRC` naming the benchmark's
  BIND), as both strategies do in a pod. Then, in the same VM, it stops and starts the
  supervisor again, for the warm figure. Three figures per strategy:

    * **first start, code loaded on demand** - as in `iex -S mix` or `mix run`: the modules
      (and our NIF) load at their first call, inside the measured time;
    * **first start, code preloaded** - as in a release, which loads every module (and so the
      NIF) when it boots: the first start in a VM, with nothing left to load;
    * **warm** - later starts in the same VM: the median of several;
    * **warm, nothing cached** - the same, with the VM's DNS cache (`inet_db`, which
      `:inet_res.getbyname/2` reads first and fills for an answer's TTL) cleared before each
      start, so that the baseline too asks the server. Ours keeps no cache either way.

  Beside the times, each first start counts the modules it loaded before the connect (code
  loaded on demand), which is where most of a fresh VM's time goes.

  The connect MFA records the time it is called and returns `true`: no node is dialed.
  Strategies and modes alternate VM by VM.
  """

  alias ClusterSRV.Bench.Stats

  @strategies [ClusterSRV.Strategy, ClusterSRV.Bench.SequentialSRV]
  @warm_starts 20

  @doc false
  def run(dns, quick?) do
    vms = if quick?, do: 3, else: 12
    dir = ClusterSRV.Harness.Watchdog.tmp_dir("cluster_srv_bench_cold")
    inetrc = ClusterSRV.Harness.DNS.write_inetrc!(dns, Path.join(dir, "inetrc"))

    try do
      samples =
        for _ <- 1..vms, {strategy, preload?} <- Enum.shuffle(combinations()), reduce: %{} do
          acc ->
            sample = sample(strategy, preload?, inetrc)

            acc
            |> Map.update({strategy, preload?}, [sample.first], &[sample.first | &1])
            |> Map.update({strategy, :warm}, sample.warm, &(sample.warm ++ &1))
            |> Map.update({strategy, :uncached}, sample.uncached, &(sample.uncached ++ &1))
            |> then(fn acc ->
              if preload?,
                do: acc,
                else: Map.update(acc, {strategy, :loaded}, [sample.loaded], &[sample.loaded | &1])
            end)
        end

      result =
        Map.new(@strategies, fn strategy ->
          {strategy,
           %{
             first: Stats.median(samples[{strategy, false}]),
             first_preloaded: Stats.median(samples[{strategy, true}]),
             warm: Stats.median(samples[{strategy, :warm}]),
             warm_uncached: Stats.median(samples[{strategy, :uncached}]),
             modules_loaded: Stats.median(samples[{strategy, :loaded}]),
             vms: vms
           }}
        end)

      for {strategy, r} <- result do
        IO.puts(
          "    #{inspect(strategy)}: first #{Stats.round(r.first)} µs, preloaded " <>
            "#{Stats.round(r.first_preloaded)} µs, warm #{Stats.round(r.warm)} µs, warm " <>
            "uncached #{Stats.round(r.warm_uncached)} µs; #{r.modules_loaded} modules loaded"
        )
      end

      result
    after
      File.rm_rf(dir)
    end
  end

  defp combinations, do: for(s <- @strategies, p <- [false, true], do: {s, p})

  defp sample(strategy, preload?, inetrc) do
    code = "ClusterSRV.Bench.ColdStart.child(#{inspect(strategy)}, #{preload?}, #{@warm_starts})"

    args = Enum.flat_map(:code.get_path() |> Enum.map(&List.to_string/1), &["-pa", &1])

    {output, 0} =
      System.cmd("elixir", args ++ ["-e", code],
        env: [{"ERL_INETRC", inetrc}, {"CLUSTER_DOMAIN", "cluster.local."}],
        stderr_to_stdout: true
      )

    case Regex.run(~r/^COLD (\d+) (\d+) ([\d ]+) \| ([\d ]+)$/m, output) do
      [_, first, loaded, warm, uncached] ->
        %{
          first: String.to_integer(first),
          loaded: String.to_integer(loaded),
          warm: integers(warm),
          uncached: integers(uncached)
        }

      nil ->
        raise "the cold-start VM for #{inspect(strategy)} failed: #{output}"
    end
  end

  defp integers(text), do: text |> String.split() |> Enum.map(&String.to_integer/1)

  @doc false
  # Runs in the fresh VM: prints
  # `COLD <first µs> <modules loaded by the first start> <warm µs>... | <uncached µs>...`.
  def child(strategy, preload?, warm_starts) do
    if preload?, do: preload!()

    loaded = length(:code.all_loaded())
    first = start_to_connect(strategy)
    loaded = length(:code.all_loaded()) - loaded
    warm = for _ <- 1..warm_starts, do: start_to_connect(strategy)

    uncached =
      for _ <- 1..warm_starts do
        :inet_db.clear_cache()
        start_to_connect(strategy)
      end

    IO.puts("COLD #{first} #{loaded} #{Enum.join(warm, " ")} | #{Enum.join(uncached, " ")}")
  end

  # As a release boots: every module of the code path's applications loaded, and with them our
  # NIF (ClusterSRV.Native's on_load).
  defp preload! do
    for app <- [:kernel, :stdlib, :elixir, :logger, :libcluster_srv] do
      Application.load(app)
      {:ok, modules} = :application.get_key(app, :modules)
      Enum.each(modules, &Code.ensure_loaded/1)
    end
  end

  defp start_to_connect(strategy) do
    parent = self()

    state = %Cluster.Strategy.State{
      topology: :bench_cold,
      connect: {__MODULE__, :connect, [parent]},
      disconnect: {__MODULE__, :connect, [parent]},
      list_nodes: {__MODULE__, :no_nodes, []},
      config: [
        service: "myapp-headless",
        namespace: "default",
        application_name: "app",
        polling_interval: 60_000
      ]
    }

    started = System.monotonic_time(:microsecond)
    child = %{id: state.topology, start: {strategy, :start_link, [[state]]}}
    {:ok, sup} = Supervisor.start_link([child], strategy: :one_for_one)

    connected =
      receive do
        {:cold_connect, at} -> at
      after
        10_000 -> raise "#{inspect(strategy)} made no connect within 10 s"
      end

    Supervisor.stop(sup)
    flush()
    connected - started
  end

  defp flush do
    receive do
      {:cold_connect, _} -> flush()
    after
      0 -> :ok
    end
  end

  @doc false
  def connect(parent, _node) do
    send(parent, {:cold_connect, System.monotonic_time(:microsecond)})
    true
  end

  @doc false
  def no_nodes, do: []
end
