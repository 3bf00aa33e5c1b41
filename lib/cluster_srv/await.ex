defmodule ClusterSRV.Await do
  @moduledoc """
  A child that holds up the start of its supervision tree until the cluster is there.

  Put it after the strategy, and before what needs the cluster (Mnesia, Horde, a singleton):

      children = [
        {ClusterSRV, service: "myapp-headless", namespace: "default", application_name: "myapp",
         topology: :myapp},
        {ClusterSRV.Await, topology: :myapp, min_nodes: 3, timeout: 60_000},
        MyApp.Mnesia,
        {Horde.Registry, name: MyApp.Registry, keys: :unique, members: :auto}
      ]

  Its start waits with `ClusterSRV.await/2`: when at least `min_nodes` nodes (this one
  included) are connected, it returns `:ignore`, so it leaves no process and the supervisor
  goes on with the next child; at the timeout it fails the supervisor's start with
  `{:cluster_not_formed, status}`, so that the pod restarts rather than run alone. Options:
  `:topology` (default `:cluster_srv`), `:min_nodes` and `:timeout`, as for `ClusterSRV.await/2`.
  """

  @doc false
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :topology, :cluster_srv)},
      start: {__MODULE__, :start_link, [opts]},
      restart: :temporary,
      type: :worker
    }
  end

  @doc "Waits as `ClusterSRV.await/2` does; `:ignore` once the cluster is there."
  @spec start_link(keyword()) :: :ignore | {:error, {:cluster_not_formed, map()}}
  def start_link(opts) do
    topology = Keyword.get(opts, :topology, :cluster_srv)

    case ClusterSRV.await(topology, Keyword.take(opts, [:min_nodes, :timeout])) do
      :ok -> :ignore
      {:error, {:timeout, status}} -> {:error, {:cluster_not_formed, status}}
    end
  end
end
