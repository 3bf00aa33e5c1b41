defmodule ClusterSRV.Topology do
  @moduledoc false
  # libcluster's strategy state, validated: the topology's name, its `connect`, `disconnect` and
  # `list_nodes` MFAs, its config (see `ClusterSRV.Config`) and its initial `meta`.
  #
  # `ClusterSRV.Strategy` takes a `%Cluster.Strategy.State{}` as libcluster's `Cluster.Supervisor`
  # passes it; `{ClusterSRV, opts}` builds the same map from its options. Either way a bad state
  # raises `ArgumentError` in the caller, naming the field.
  #
  #     iex> topology = ClusterSRV.Topology.new!(%{
  #     ...>   topology: :k8s,
  #     ...>   connect: {:net_kernel, :connect_node, []},
  #     ...>   disconnect: {:erlang, :disconnect_node, []},
  #     ...>   list_nodes: {:erlang, :nodes, [:connected]},
  #     ...>   config: [service: "myapp-headless", namespace: "default", application_name: "myapp"],
  #     ...>   meta: nil
  #     ...> })
  #     iex> {topology.name, topology.config.query}
  #     {:k8s, "myapp-headless.default.svc.cluster.local."}

  alias ClusterSRV.Config

  @enforce_keys [:name, :connect, :disconnect, :list_nodes, :config]
  defstruct [
    :name,
    :connect,
    :disconnect,
    :list_nodes,
    :config,
    unknown: [],
    meta: MapSet.new(),
    libcluster?: true
  ]

  @type t :: %__MODULE__{
          name: atom(),
          connect: {module(), atom(), list()},
          disconnect: {module(), atom(), list()},
          list_nodes: {module(), atom(), list()},
          config: Config.t(),
          unknown: [atom()],
          meta: MapSet.t(node()),
          libcluster?: boolean()
        }

  @doc """
  Validates libcluster's state (a `%Cluster.Strategy.State{}`, or a map with its fields:
  `topology`, `connect`, `disconnect`, `list_nodes`, `config` and `meta`). Unknown config keys
  are kept in `:unknown`, for the strategy to log.
  """
  @spec new!(map()) :: t()
  def new!(%{topology: name, config: config} = state) do
    {config, unknown} = Config.strategy!(config)

    %__MODULE__{
      name: name,
      connect: mfa!(state, :connect),
      disconnect: mfa!(state, :disconnect),
      list_nodes: mfa!(state, :list_nodes),
      config: config,
      unknown: unknown,
      meta: meta!(Map.get(state, :meta))
    }
  end

  def new!(other) do
    raise ArgumentError,
          "expected a %Cluster.Strategy.State{} with :topology and :config, got: #{inspect(other)}"
  end

  @doc "Calls the topology's `list_nodes` MFA."
  @spec list_nodes(t()) :: [node()]
  def list_nodes(%__MODULE__{list_nodes: {m, f, args}}), do: apply(m, f, args)

  defp mfa!(state, key) do
    {module, function, args} =
      case Map.get(state, key) do
        {m, f, a} = mfa when is_atom(m) and is_atom(f) and is_list(a) ->
          mfa

        other ->
          raise ArgumentError,
                "invalid #{inspect(key)} in the strategy state: expected {module, function, args}, " <>
                  "got: #{inspect(other)}"
      end

    arity = if key == :list_nodes, do: length(args), else: length(args) + 1

    unless Code.ensure_loaded?(module) and function_exported?(module, function, arity) do
      raise ArgumentError,
            "invalid #{inspect(key)} in the strategy state: " <>
              "#{inspect(module)}.#{function}/#{arity} is undefined"
    end

    {module, function, args}
  end

  defp meta!(nil), do: MapSet.new()
  defp meta!(%MapSet{} = meta), do: meta

  defp meta!(other) do
    raise ArgumentError,
          "invalid :meta in the strategy state: expected nil or a MapSet of nodes, got: #{inspect(other)}"
  end
end
