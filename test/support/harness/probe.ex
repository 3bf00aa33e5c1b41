defmodule ClusterSRV.Harness.Probe do
  @moduledoc """
  Connect, disconnect and list_nodes MFAs that report every call to their owner.

  They stand in for `:net_kernel.connect_node/1` and friends in unit tests, so a test can see
  exactly which calls the strategy makes, when, and control what each returns.

      probe = ClusterSRV.Harness.Probe.start!()
      state = %Cluster.Strategy.State{connect: ClusterSRV.Harness.Probe.mfa(probe, :connect), ...}
      # the owner receives {:probe, :connect, node, monotonic_ms} for each call
  """
  use Agent

  @doc """
  Starts a probe owned by the caller. Options: `:connected` (nodes seen as connected at start),
  `:delay` (ms each connect takes; `:infinity` for a connect that never returns), `:results` (a
  map of node to what connect returns; `true` by default), `:disconnect_delay` and
  `:disconnect_results`, the same for disconnects.
  """
  def start!(opts \\ []) do
    owner = self()

    {:ok, pid} =
      Agent.start_link(fn ->
        %{
          owner: owner,
          connected: MapSet.new(Keyword.get(opts, :connected, [])),
          delay: Keyword.get(opts, :delay, 0),
          results: Keyword.get(opts, :results, %{}),
          disconnect_delay: Keyword.get(opts, :disconnect_delay, 0),
          disconnect_results: Keyword.get(opts, :disconnect_results, %{})
        }
      end)

    pid
  end

  @doc "The `{module, function, args}` for `kind`, as libcluster's state holds it."
  def mfa(probe, :connect), do: {__MODULE__, :connect, [probe]}
  def mfa(probe, :disconnect), do: {__MODULE__, :disconnect, [probe]}
  def mfa(probe, :list_nodes), do: {__MODULE__, :list_nodes, [probe]}

  @doc "Sets what connecting to `node` returns (`:raise` makes it raise)."
  def put_result(probe, node, result),
    do: Agent.update(probe, &put_in(&1, [:results, node], result))

  @doc "Sets how long each connect takes, in ms."
  def put_delay(probe, delay), do: Agent.update(probe, &%{&1 | delay: delay})

  @doc "Marks nodes as connected or not, as if the network had changed."
  def set_connected(probe, nodes), do: Agent.update(probe, &%{&1 | connected: MapSet.new(nodes)})

  @doc false
  def connect(probe, node) do
    %{delay: delay, results: results} = state = Agent.get(probe, & &1)
    run(probe, state.owner, {:connect, node}, delay, results, &MapSet.put/2)
  end

  @doc false
  def disconnect(probe, node) do
    %{disconnect_delay: delay, disconnect_results: results} = state = Agent.get(probe, & &1)
    run(probe, state.owner, {:disconnect, node}, delay, results, &MapSet.delete/2)
  end

  # Reports the call and the process making it, waits, then returns the node's set result
  # (`true` unless set; `:raise` raises), updating the connected set only on `true`.
  defp run(probe, owner, {kind, node}, delay, results, update) do
    send(owner, {:probe, kind, node, System.monotonic_time(:millisecond)})
    send(owner, {:probe_job, self()})
    if delay == :infinity or delay > 0, do: Process.sleep(delay)

    case Map.get(results, node, true) do
      :raise ->
        raise "probe #{kind} to #{node} raised"

      true ->
        Agent.update(probe, &%{&1 | connected: update.(&1.connected, node)})
        true

      other ->
        other
    end
  end

  @doc false
  def list_nodes(probe), do: probe |> Agent.get(& &1.connected) |> MapSet.to_list()
end
