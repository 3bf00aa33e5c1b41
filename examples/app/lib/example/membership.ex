defmodule Example.Membership do
  @moduledoc """
  Logs the cluster's members each time a node joins or leaves, as
  `[example] cluster: a@host, b@host`.
  """
  use GenServer

  require Logger

  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl true
  def init(nil) do
    if Node.alive?(), do: :ok = :net_kernel.monitor_nodes(true)
    report()
    {:ok, nil}
  end

  @impl true
  def handle_info({event, _node}, state) when event in [:nodeup, :nodedown] do
    report()
    {:noreply, state}
  end

  defp report do
    members = [node() | Node.list()] |> Enum.sort() |> Enum.join(", ")
    Logger.info("[example] cluster: #{members}")
  end
end
