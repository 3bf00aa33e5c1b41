defmodule ClusterSRV.Harness.Chaos.Journal do
  @moduledoc """
  Everything a chaos run saw, in one place and with its times (monotonic ms): what each pod
  reported (as `ClusterSRV.Harness.Pod` notifies a subscriber) and what the run did to the
  cluster (the truth). The pods' own controllers go when their pods are killed; the journal
  keeps their reports to the end.

      journal = ClusterSRV.Harness.Chaos.Journal.start_link()
      cluster = NetnsCluster.start!(..., subscriber: Journal.relay(journal, "sts"))
      Journal.record(journal, {:listed, "sts", node})
      Journal.events(journal)
      #=> [{at, {:pod, "sts", "sts-0"}, {:members, ...}}, {at, :truth, {:listed, "sts", node}}, ...]
  """
  use GenServer

  @doc "Starts a journal linked to the caller."
  def start_link do
    {:ok, pid} = GenServer.start_link(__MODULE__, [])
    pid
  end

  @doc "Stops the journal and its relays."
  def stop(journal) do
    # Its relays are linked to it and go with a :shutdown; its caller must not.
    Process.unlink(journal)
    GenServer.stop(journal, :shutdown)
  end

  @doc """
  A process to give a cluster as its pods' `subscriber`: it tags each of their reports with the
  cluster's name (two clusters may have pods of one label) and hands it to the journal.
  """
  def relay(journal, cluster), do: GenServer.call(journal, {:relay, cluster})

  @doc "Records what the run did, at `at` (default now)."
  def record(journal, event, at \\ now()), do: GenServer.call(journal, {:truth, event, at})

  @doc "Everything recorded so far, ordered by time: `{at, source, event}`."
  def events(journal), do: GenServer.call(journal, :events, 60_000)

  @impl true
  def init(_), do: {:ok, %{events: []}}

  @impl true
  def handle_call({:relay, cluster}, _from, state) do
    journal = self()
    # Linked: it goes when the journal stops.
    {:reply, spawn_link(fn -> relay_loop(journal, cluster) end), state}
  end

  def handle_call({:truth, event, at}, _from, state),
    do: {:reply, :ok, %{state | events: [{at, :truth, event} | state.events]}}

  def handle_call(:events, _from, state),
    do: {:reply, state.events |> Enum.reverse() |> Enum.sort_by(&elem(&1, 0)), state}

  @impl true
  def handle_info({:pod, at, source, event}, state),
    do: {:noreply, %{state | events: [{at, source, event} | state.events]}}

  defp relay_loop(journal, cluster) do
    receive do
      {:pod_event, label, event, at} -> send(journal, {:pod, at, {:pod, cluster, label}, event})
    end

    relay_loop(journal, cluster)
  end

  defp now, do: System.monotonic_time(:millisecond)
end
