defmodule Cluster.Strategy.State do
  @moduledoc """
  A stand-in for libcluster's `%Cluster.Strategy.State{}`, with exactly its fields and defaults.

  libcluster is the user's dependency and hex is out of reach here, so the tests, the demo and
  the benchmarks build the state with this struct, the way `Cluster.Supervisor` does. It is never
  compiled into the package.
  """
  defstruct topology: nil,
            connect: nil,
            disconnect: nil,
            list_nodes: nil,
            meta: nil,
            config: []

  @doc """
  The state `Cluster.Supervisor` builds for a topology: its defaults for the MFAs, `meta: nil`.

      iex> state = Cluster.Strategy.State.for_topology(:k8s, config: [service: "s"])
      iex> {state.connect, state.disconnect, state.list_nodes, state.meta}
      {{:net_kernel, :connect_node, []}, {:erlang, :disconnect_node, []}, {:erlang, :nodes, [:connected]}, nil}
  """
  def for_topology(topology, spec) do
    %__MODULE__{
      topology: topology,
      connect: Keyword.get(spec, :connect, {:net_kernel, :connect_node, []}),
      disconnect: Keyword.get(spec, :disconnect, {:erlang, :disconnect_node, []}),
      list_nodes: Keyword.get(spec, :list_nodes, {:erlang, :nodes, [:connected]}),
      config: Keyword.get(spec, :config, []),
      meta: nil
    }
  end
end
