defmodule ClusterSRV.Connector do
  @moduledoc false
  # Runs connect and disconnect jobs: each in a process of its own, linked to its owner and
  # bounded by a deadline, and turns each end into an outcome.
  #
  # It is a value the owning process keeps, not a process: `start/3` spawns a job, and the owner
  # hands every message it receives to `handle_info/2`, which says when a job has ended and how.
  # A job calls the topology's `connect` or `disconnect` MFA with the node appended to its
  # arguments, as libcluster does. Outcomes:
  #
  #   * `{:returned, value, duration}` - the MFA returned `value` (libcluster's `true`, `false`
  #     or `:ignored`, or anything else) after `duration` native time units;
  #   * `{:crashed, reason}` - the MFA raised or exited;
  #   * `:timed_out` - it had not returned after `timeout` ms, and was killed.
  #
  # Since jobs are linked, they end with their owner; the owner traps exits so that a job's end
  # is a message, not its own end.
  #
  #     connector = ClusterSRV.Connector.new({:net_kernel, :connect_node, []},
  #                                          {:erlang, :disconnect_node, []}, 30_000)
  #     connector = ClusterSRV.Connector.start(connector, :connect, :"app@10.0.0.2")
  #     receive do
  #       message ->
  #         case ClusterSRV.Connector.handle_info(connector, message) do
  #           {:done, :connect, node, outcome, connector} -> ...
  #           {:running, connector} -> ...
  #           :unknown -> ...
  #         end
  #     end

  @enforce_keys [:connect, :disconnect, :timeout]
  defstruct [:connect, :disconnect, :timeout, jobs: %{}]

  @typedoc "The jobs one owner runs."
  @type t :: %__MODULE__{
          connect: {module(), atom(), list()},
          disconnect: {module(), atom(), list()},
          timeout: pos_integer(),
          jobs: %{reference() => map()}
        }

  @type kind :: :connect | :disconnect
  @type outcome ::
          {:returned, term(), integer()} | {:crashed, term()} | :timed_out

  @doc "A connector with the topology's MFAs and the longest a job may take, in ms."
  @spec new({module(), atom(), list()}, {module(), atom(), list()}, pos_integer()) :: t()
  def new(connect, disconnect, timeout),
    do: %__MODULE__{connect: connect, disconnect: disconnect, timeout: timeout}

  @doc "Starts a job of `kind` for `node`."
  @spec start(t(), kind(), node()) :: t()
  def start(%__MODULE__{} = connector, kind, node) when kind in [:connect, :disconnect] do
    {m, f, args} = if kind == :connect, do: connector.connect, else: connector.disconnect

    # The job reports through its exit reason, so a job that raises is reported the same way.
    {pid, monitor} =
      :erlang.spawn_opt(
        fn ->
          started = System.monotonic_time()
          result = apply(m, f, args ++ [node])
          exit({:cluster_srv_job, result, System.monotonic_time() - started})
        end,
        [:link, :monitor]
      )

    deadline = Process.send_after(self(), {:cluster_srv_job_deadline, monitor}, connector.timeout)
    job = %{kind: kind, node: node, pid: pid, deadline: deadline, timed_out?: false}
    %{connector | jobs: Map.put(connector.jobs, monitor, job)}
  end

  @doc """
  Handles a message of the owner's: a job's end gives `{:done, kind, node, outcome,
  connector}`, a job's deadline kills the job and gives `{:running, connector}` (its end
  follows), and any other message gives `:unknown`.
  """
  @spec handle_info(t(), term()) ::
          {:done, kind(), node(), outcome(), t()} | {:running, t()} | :unknown
  def handle_info(%__MODULE__{jobs: jobs} = connector, {:DOWN, monitor, :process, _pid, reason})
      when is_map_key(jobs, monitor) do
    {job, jobs} = Map.pop(jobs, monitor)
    Process.cancel_timer(job.deadline)
    {:done, job.kind, job.node, outcome(job, reason), %{connector | jobs: jobs}}
  end

  def handle_info(%__MODULE__{jobs: jobs} = connector, {:cluster_srv_job_deadline, monitor})
      when is_map_key(jobs, monitor) do
    Process.exit(jobs[monitor].pid, :kill)
    {:running, put_in(connector.jobs[monitor].timed_out?, true)}
  end

  def handle_info(%__MODULE__{}, _message), do: :unknown

  defp outcome(%{timed_out?: true}, _reason), do: :timed_out
  defp outcome(_job, {:cluster_srv_job, value, duration}), do: {:returned, value, duration}
  defp outcome(_job, reason), do: {:crashed, reason}
end
