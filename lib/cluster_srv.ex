defmodule ClusterSRV do
  @moduledoc """
  DNS SRV clustering for Erlang/Elixir, with libcluster or without it.

  ## With libcluster

  Name `ClusterSRV.Strategy` in a topology; it takes libcluster's `Kubernetes.DNSSRV` config
  unchanged (see its docs for every key):

      config :libcluster,
        topologies: [
          myapp: [
            strategy: ClusterSRV.Strategy,
            config: [service: "myapp-headless", namespace: "default", application_name: "myapp"]
          ]
        ]

  ## Without libcluster

  Add one child to your supervision tree, as with Phoenix's `dns_cluster`:

      children = [
        {ClusterSRV, service: "myapp-headless", namespace: "default", application_name: "myapp"}
      ]

  It is the same strategy and the same code path: `start_link/1` takes the strategy's config
  keys, plus libcluster's optional topology keys:

    * `:connect`, `:disconnect`, `:list_nodes` - `{module, function, args}`, with libcluster's
      defaults (`{:net_kernel, :connect_node, []}`, `{:erlang, :disconnect_node, []}`,
      `{:erlang, :nodes, [:connected]}`);
    * `:topology` - the name in the logs, `[libcluster:<topology>]`. Defaults to `:cluster_srv`.

  A bad key raises `ArgumentError` at start, as for the strategy.

  When the node is not distributed (`Node.self() == :nonode@nohost`, as in `iex -S mix` without
  `--name`), it logs once and returns `:ignore`: nothing polls, and the supervisor carries on.
  When the node uses short names, it warns once: the names it finds in DNS are fully qualified,
  which only long names (`--name`, `RELEASE_DISTRIBUTION=name`) can reach.
  """

  require Logger

  @topology_keys [:connect, :disconnect, :list_nodes, :topology]

  @doc """
  The child spec for `{ClusterSRV, opts}`. Its id is `{ClusterSRV, topology}`, so that several
  topologies can run side by side.

      iex> ClusterSRV.child_spec(service: "s", namespace: "n", application_name: "a")
      %{id: {ClusterSRV, :cluster_srv}, start: {ClusterSRV, :start_link, [[service: "s", namespace: "n", application_name: "a"]]}, type: :worker}
  """
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :topology, :cluster_srv)},
      start: {__MODULE__, :start_link, [opts]},
      type: :worker
    }
  end

  @doc """
  Validates `opts` and starts the strategy, or returns `:ignore` when the node is not
  distributed. See the module docs for the options.
  """
  @spec start_link(keyword()) :: GenServer.on_start() | :ignore
  def start_link(opts) when is_list(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "expected ClusterSRV options as a keyword list, got: #{inspect(opts)}"
    end

    {topology_opts, config} = Keyword.split(opts, @topology_keys)
    topology = Keyword.get(topology_opts, :topology, :cluster_srv)

    unless is_atom(topology) do
      raise ArgumentError,
            "invalid value for :topology: expected an atom naming the topology in the logs, " <>
              "got: #{inspect(topology)}. Example: topology: :myapp"
    end

    state = %{
      topology: topology,
      connect: Keyword.get(topology_opts, :connect, {:net_kernel, :connect_node, []}),
      disconnect: Keyword.get(topology_opts, :disconnect, {:erlang, :disconnect_node, []}),
      list_nodes: Keyword.get(topology_opts, :list_nodes, {:erlang, :nodes, [:connected]}),
      config: config,
      meta: nil
    }

    # Validate first: a bad config is a mistake whether or not the node is distributed.
    built = ClusterSRV.Strategy.build!(state)

    case Node.self() do
      :nonode@nohost ->
        Logger.info(
          "[libcluster:#{topology}] the node is not distributed, so DNS clustering is off. " <>
            "Start it with a long name: `--name app@host`, or in a release " <>
            "RELEASE_DISTRIBUTION=name and RELEASE_NODE=app@host."
        )

        :ignore

      _distributed ->
        if :net_kernel.longnames() != true do
          Logger.warning(
            "[libcluster:#{topology}] the node #{inspect(Node.self())} uses short names, but the " <>
              "names found in DNS are fully qualified: start it with `--name` " <>
              "(RELEASE_DISTRIBUTION=name in a release)"
          )
        end

        ClusterSRV.Strategy.start_built(built)
    end
  end

  def start_link(opts) do
    raise ArgumentError, "expected ClusterSRV options as a keyword list, got: #{inspect(opts)}"
  end
end
