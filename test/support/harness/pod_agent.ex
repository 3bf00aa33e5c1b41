defmodule ClusterSRV.Harness.PodAgent do
  @moduledoc """
  The code that runs inside a pod: a real BEAM node that starts `ClusterSRV.Strategy` (or, for
  the benchmarks' baseline, another strategy module) the way libcluster's `Cluster.Supervisor`
  does, and reports what happens on its standard output.

  Lines that start with `@@ ` are for the controller (`ClusterSRV.Harness.Pod`):

    * `@@ ready <node> <os pid>` - the node is up and its strategy is starting;
    * `@@ nodes <node>,<node>,...` - the connected nodes, each time they change;
    * `@@ connect <node>` and `@@ connected <node> <result> <ms>` - each connect call the
      strategy itself makes, and how it ended, so that tests can tell the strategy's connects
      apart from those OTP's `global` makes on its own.

  Anything else on the output is the pod's log.
  """

  @doc "Runs the pod from the config file the controller wrote; never returns."
  def main(config_path) do
    %{topology: topology, config: config} =
      settings = config_path |> File.read!() |> :erlang.binary_to_term()

    strategy = Map.get(settings, :strategy, ClusterSRV.Strategy)
    standalone? = Map.get(settings, :standalone, false)

    Logger.configure(level: :info)
    watcher = spawn_link(&watch_nodes/0)
    :ok = wait_subscribed(watcher)

    spec = [config: config, connect: {__MODULE__, :connect, []}]
    state = Cluster.Strategy.State.for_topology(topology, spec)

    # Ready means the node is up and its strategy is starting: a strategy whose start blocks (the
    # benchmark's baseline polls and connects inside init) must not hide that the pod runs.
    say("ready #{node()} #{System.pid()}")

    child =
      if standalone? do
        # The one-line child of ClusterSRV, without libcluster.
        {ClusterSRV, config ++ [topology: topology, connect: {__MODULE__, :connect, []}]}
      else
        # Cluster.Supervisor's child spec for a topology.
        %{id: topology, start: {strategy, :start_link, [[state]]}}
      end

    {:ok, _sup} = Supervisor.start_link([child], strategy: :one_for_one)
    Process.sleep(:infinity)
  end

  @doc false
  # The topology's connect MFA: :net_kernel.connect_node/1, reported before and after.
  def connect(node) do
    say("connect #{node}")
    started = System.monotonic_time(:millisecond)
    result = :net_kernel.connect_node(node)
    say("connected #{node} #{result} #{System.monotonic_time(:millisecond) - started}")
    result
  end

  # Other pods may connect as soon as distribution is up, before this runs: report the nodes
  # present at subscription, then every change.
  defp watch_nodes do
    :ok = :net_kernel.monitor_nodes(true)
    say_nodes()
    receive do: ({:subscribed, from} -> send(from, :subscribed))
    report_nodes()
  end

  defp wait_subscribed(watcher) do
    send(watcher, {:subscribed, self()})
    receive do: (:subscribed -> :ok)
  end

  defp report_nodes do
    receive do
      {:nodeup, _} -> :ok
      {:nodedown, _} -> :ok
    end

    say_nodes()
    report_nodes()
  end

  defp say_nodes, do: say("nodes " <> (Node.list() |> Enum.sort() |> Enum.join(",")))

  defp say(line), do: IO.puts("@@ " <> line)
end
