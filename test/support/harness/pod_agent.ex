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
      apart from those OTP's `global` makes on its own;
    * `@@ disconnect <node>` - each disconnect call the strategy makes;
    * `@@ lookup <node count> <result>` - each lookup the strategy finished, from its
      `[:cluster_srv, :lookup]` telemetry, where the test build's `:telemetry` stand-in is loaded,
      then `@@ self_listed true|false` when whether its answers list this node changed (its
      `ClusterSRV.status/1`);
    * `@@ vm <processes> <fds> <atoms> <memory> <modules>` - every 2 s, the VM's process
      count, its open file descriptors (from `/proc/self/fd`), its atom count,
      `:erlang.memory(:total)` in bytes and its loaded modules, so that a long run can tell a
      leak from a steady state (a module loaded late brings its atoms).

  Anything else on the output is the pod's log.

      ClusterSRV.Harness.PodAgent.main("/tmp/cluster_srv_pods_.../myapp-0.config")
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
    report_lookups(topology)
    spawn_link(&report_vm/0)

    mfas = [connect: {__MODULE__, :connect, []}, disconnect: {__MODULE__, :disconnect, []}]
    spec = [config: config] ++ mfas
    state = Cluster.Strategy.State.for_topology(topology, spec)

    # Ready means the node is up and its strategy is starting: a strategy whose start blocks (the
    # benchmark's baseline polls and connects inside init) must not hide that the pod runs.
    say("ready #{node()} #{System.pid()}")

    child =
      if standalone? do
        # The one-line child of ClusterSRV, without libcluster.
        {ClusterSRV, config ++ [topology: topology] ++ mfas}
      else
        # Cluster.Supervisor's child spec for a topology.
        %{id: topology, start: {strategy, :start_link, [[state]]}}
      end

    # As an application, so that SIGTERM (init:stop/0) stops it as it stops a release's app:
    # its supervisor shuts the strategy down, and the VM exits.
    app =
      {:application, :cluster_srv_pod,
       [
         description: ~c"a pod of the local cluster",
         vsn: ~c"0",
         modules: [],
         registered: [],
         applications: [:kernel, :stdlib, :elixir, :logger],
         mod: {__MODULE__.App, [child]}
       ]}

    :ok = :application.load(app)
    {:ok, _} = Application.ensure_all_started(:cluster_srv_pod)
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

  @doc false
  # The topology's disconnect MFA: :erlang.disconnect_node/1, reported first.
  def disconnect(node) do
    say("disconnect #{node}")
    :erlang.disconnect_node(node)
  end

  # The :telemetry stand-in of test builds sends a topology's events to the process registered
  # for it; elsewhere there is nothing to report.
  defp report_lookups(topology) do
    if Code.ensure_loaded?(:telemetry) and not function_exported?(:telemetry, :attach, 4) do
      reporter = spawn_link(fn -> report_lookups(topology, nil) end)
      :persistent_term.put({:telemetry_stand_in, topology}, reporter)
    end
  end

  # After each lookup, whether the strategy's latest answer listed this node, when that changed.
  defp report_lookups(topology, self_listed) do
    receive do
      {:telemetry, [:cluster_srv, :lookup], %{nodes: nodes}, %{result: result}} ->
        say("lookup #{nodes} #{inspect(result)}")

        case self_listed(topology) do
          ^self_listed ->
            report_lookups(topology, self_listed)

          now ->
            say("self_listed #{now}")
            report_lookups(topology, now)
        end

      _other ->
        report_lookups(topology, self_listed)
    end
  end

  defp self_listed(topology) do
    case ClusterSRV.status(topology) do
      %{self_listed: self_listed} -> self_listed
      _ -> nil
    end
  catch
    # The strategy is stopping.
    :exit, _ -> nil
  end

  @vm_every 2_000

  defp report_vm do
    # The listing's own descriptor is counted in every sample alike.
    fds = length(File.ls!("/proc/self/fd"))

    say(
      "vm #{:erlang.system_info(:process_count)} #{fds} #{:erlang.system_info(:atom_count)} " <>
        "#{:erlang.memory(:total)} #{length(:code.all_loaded())}"
    )

    Process.sleep(@vm_every)
    report_vm()
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

defmodule ClusterSRV.Harness.PodAgent.App do
  @moduledoc false
  # The pod's application: a supervisor of the strategy, as libcluster's or the app's own.
  use Application

  @impl true
  def start(_type, children), do: Supervisor.start_link(children, strategy: :one_for_one)
end
