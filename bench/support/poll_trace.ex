defmodule ClusterSRV.Bench.PollTrace do
  @moduledoc """
  Traces a strategy process over a number of polls: its time on a scheduler (from each
  `:in` to the next `:out`) and how many polls it made. A poll is a lookup answer for
  `ClusterSRV.Strategy`, and a `:load` tick for the sequential baseline (not `:timeout`, which its
  process also receives while it looks up: counting it tripled the baseline's polls).
  Shared by the per-poll section of `ClusterSRV.Bench` and `ClusterSRV.Bench.Scale`, which
  calls it inside the pods.
  """

  @doc """
  Traces `pid` until it has made `polls` polls: `{busy, polls}`, the busy time in native
  units. Raises when `timeout_ms` passes first. Call `flush/0` afterwards.
  """
  @spec collect(pid(), pos_integer(), pos_integer()) :: {integer(), pos_integer()}
  def collect(pid, polls, timeout_ms) do
    :erlang.trace(pid, true, [:running, :receive, :monotonic_timestamp])
    deadline = System.monotonic_time(:millisecond) + timeout_ms

    try do
      collect(pid, polls, nil, 0, 0, deadline)
    after
      :erlang.trace(pid, false, [:running, :receive])
    end
  end

  defp collect(_pid, polls, _in, busy, polls, _deadline), do: {busy, polls}

  defp collect(pid, polls, scheduled_in, busy, count, deadline) do
    if System.monotonic_time(:millisecond) > deadline,
      do: raise("the strategy stopped polling after #{count} polls")

    receive do
      {:trace_ts, ^pid, :in, _, ts} ->
        collect(pid, polls, ts, busy, count, deadline)

      {:trace_ts, ^pid, :out, _, ts} when scheduled_in != nil ->
        collect(pid, polls, nil, busy + ts - scheduled_in, count, deadline)

      {:trace_ts, ^pid, :receive, message, _ts} ->
        polled = if poll_message?(message), do: 1, else: 0
        collect(pid, polls, scheduled_in, busy, count + polled, deadline)

      # Only this trace's own events: a caller may be tracing garbage collections meanwhile,
      # and reads those messages afterwards.
      {:trace_ts, ^pid, tag, _, _} when tag in [:out, :in_exiting, :out_exiting, :out_exited] ->
        collect(pid, polls, scheduled_in, busy, count, deadline)
    after
      1_000 -> collect(pid, polls, scheduled_in, busy, count, deadline)
    end
  end

  defp poll_message?(:load), do: true
  defp poll_message?({:cluster_srv_lookup, _ref, _result}), do: true
  defp poll_message?(_other), do: false

  @doc "Drops the trace messages still in the mailbox, of every kind."
  @spec flush() :: :ok
  def flush do
    receive do
      {:trace_ts, _, _, _, _} -> flush()
      {:trace, _, _, _} -> flush()
    after
      100 -> :ok
    end
  end
end
