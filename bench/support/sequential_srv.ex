defmodule ClusterSRV.Bench.SequentialSRV do
  @moduledoc """
  The baseline for the benchmarks: a strategy that follows libcluster's
  `Cluster.Strategy.Kubernetes.DNSSRV` algorithm, as DEVELOPERS.md describes it, defects
  included. Written for the comparison; it is not libcluster's code.

    * `init` polls, then returns a timeout of 0, which starts a second timer chain;
    * the lookup is `:inet_res.getbyname(name, :srv)` (or the configured `resolver`), run inside
      the strategy process;
    * every target becomes an atom with `String.to_atom/1`, unvalidated;
    * a failed lookup yields no nodes, so every known node is disconnected;
    * nodes are connected one at a time inside the strategy process.

  It takes libcluster's state (`%Cluster.Strategy.State{}`) and config keys.
  """
  use GenServer

  require Logger

  def start_link([state]), do: GenServer.start_link(__MODULE__, state)

  @impl true
  def init(%{meta: nil} = state), do: init(%{state | meta: MapSet.new()})
  def init(state), do: {:ok, load(state), 0}

  @impl true
  def handle_info(:timeout, state), do: handle_info(:load, state)
  def handle_info(:load, state), do: {:noreply, load(state)}
  def handle_info(_other, state), do: {:noreply, state}

  defp load(state) do
    listed = MapSet.new(nodes_from_dns(state))
    me = Node.self()
    connected = MapSet.new(call(state.list_nodes, []))

    removed = MapSet.difference(state.meta, listed)

    for node <- removed, node in connected, node != me do
      call(state.disconnect, [node])
    end

    failed =
      for node <- listed, node not in connected, node != me, reduce: [] do
        failed ->
          case call(state.connect, [node]) do
            true -> failed
            _ -> [node | failed]
          end
      end

    Process.send_after(self(), :load, Keyword.get(state.config, :polling_interval, 5_000))
    %{state | meta: MapSet.difference(listed, MapSet.new(failed))}
  end

  defp nodes_from_dns(%{config: config}) do
    app = Keyword.fetch!(config, :application_name)
    service = Keyword.fetch!(config, :service)
    namespace = Keyword.fetch!(config, :namespace)
    domain = System.get_env("CLUSTER_DOMAIN", "cluster.local.")
    resolver = Keyword.get(config, :resolver, &:inet_res.getbyname(&1, :srv))

    case resolver.(String.to_charlist("#{service}.#{namespace}.svc.#{domain}")) do
      {:ok, {:hostent, _, _, :srv, _, entries}} ->
        for {_, _, _, target} <- entries, do: String.to_atom("#{app}@#{target}")

      {:error, _reason} ->
        []
    end
  end

  defp call({m, f, args}, extra), do: apply(m, f, args ++ extra)
end
