defmodule ClusterSRV.FakeDNSCluster do
  @moduledoc """
  A resolver module with dns_cluster's callbacks, as dns_cluster's users pass one in tests:
  `basename/1`, `connect_node/1`, `list_nodes/0` and `lookup/2`. Its A answer lists
  `10.0.0.1` (connected already) and `10.0.0.2`, its AAAA answer `fd00::3`. Each connect is
  reported as `{:fake_dns_cluster, :connect, node}` to the process that last called
  `subscribe/0`.
  """

  @doc "Reports this module's connects to the caller from now on."
  def subscribe, do: :persistent_term.put({__MODULE__, :subscriber}, self())

  def basename(_node), do: "fake"

  def connect_node(node) do
    case :persistent_term.get({__MODULE__, :subscriber}, nil) do
      nil -> :ok
      pid -> send(pid, {:fake_dns_cluster, :connect, node})
    end

    true
  end

  def list_nodes, do: [:"fake@10.0.0.1"]

  def lookup(_query, :a), do: [{10, 0, 0, 1}, {10, 0, 0, 2}]
  def lookup(_query, :aaaa), do: [{0xFD00, 0, 0, 0, 0, 0, 0, 3}]
  def lookup(_query, :srv), do: []
end
