defmodule ClusterSRV.Harness.Pod do
  @moduledoc """
  One pod: a real BEAM node in its own OS process, on its own loopback address.

  The node is named `<app>@<host>`, listens for distribution only on its address, on the
  port every pod shares, with no epmd, and resolves host names through the cluster DNS. It runs
  `ClusterSRV.Harness.PodAgent`, which starts the strategy with the config given here.

  The controller process owning the pod sees each line the pod reports and keeps the pod's
  membership, the strategy's connect calls, and the times they happened (monotonic ms). The
  pod's OS process runs under `ClusterSRV.Harness.Watchdog`, so it dies with its controller.
  """
  use GenServer

  alias ClusterSRV.Harness.Watchdog

  defstruct [:pid, :name, :label, :ip]

  @type t :: %__MODULE__{pid: pid(), name: node(), label: String.t(), ip: :inet.ip4_address()}

  @doc """
  Starts a pod. Options:

    * `:label`, `:host`, `:ip`, `:app` - the pod's name is `app@host`, on `ip`;
    * `:config` - the strategy's config, as a user writes it under `config :libcluster`;
    * `:strategy` - the strategy module (default `ClusterSRV.Strategy`);
    * `:standalone` - run `{ClusterSRV, config}` instead, as an app without libcluster does;
    * `:dist_port`, `:inetrc`, `:cookie` - the cluster's shared distribution settings;
    * `:dir` - where to write the pod's config;
    * `:subscriber` - a process that gets `{:pod_event, label, event, at_ms}` for each report;
    * `:bare` - start a bare `erl` node that runs no strategy and reports nothing but `ready`:
      a live pod that only accepts connections, cheap enough to start by the dozen.
  """
  def start!(opts) do
    {:ok, pid} = GenServer.start_link(__MODULE__, opts)

    %__MODULE__{
      pid: pid,
      name: :"#{opts[:app]}@#{opts[:host]}",
      label: opts[:label],
      ip: opts[:ip]
    }
  end

  @doc "Waits until the strategy runs in the pod."
  def await_ready(%__MODULE__{pid: pid}, timeout \\ 20_000),
    do: GenServer.call(pid, {:await_ready, timeout}, timeout + 1_000)

  @doc "The nodes the pod is connected to."
  def members(%__MODULE__{pid: pid}), do: GenServer.call(pid, :members)

  @doc "Everything the pod reported: `%{ready_at, members, history, connects, alive, log}`."
  def info(%__MODULE__{pid: pid}), do: GenServer.call(pid, :info)

  @doc "Kills the pod's VM at once, as a crashed or evicted pod dies."
  def kill(%__MODULE__{pid: pid}), do: GenServer.call(pid, :kill, 10_000)

  @doc "Stops the pod and its VM."
  def stop(%__MODULE__{pid: pid}) do
    GenServer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    port = if opts[:bare], do: open_bare(opts), else: open_agent(opts)

    {:ok,
     %{
       port: port,
       label: Keyword.fetch!(opts, :label),
       subscriber: Keyword.get(opts, :subscriber),
       os_pid: nil,
       ready_at: nil,
       waiting: [],
       members: MapSet.new(),
       history: [],
       connects: [],
       alive: true,
       log: []
     }}
  end

  defp dist_flags(opts) do
    {a, b, c, d} = Keyword.fetch!(opts, :ip)

    "-start_epmd false -erl_epmd_port #{opts[:dist_port]} " <>
      "-kernel inet_dist_use_interface {#{a},#{b},#{c},#{d}}"
  end

  defp open_bare(opts) do
    args =
      ["-noshell", "-name", "#{opts[:app]}@#{opts[:host]}"] ++
        ["-setcookie", Keyword.get(opts, :cookie, "cluster_srv")] ++
        String.split(dist_flags(opts)) ++
        ["-eval", ~S|io:format("@@ ready ~s ~s~n", [node(), os:getpid()])|]

    Watchdog.open(System.find_executable("erl"), args)
  end

  defp open_agent(opts) do
    label = Keyword.fetch!(opts, :label)
    config_path = Path.join(Keyword.fetch!(opts, :dir), "#{label}.config")

    File.write!(
      config_path,
      :erlang.term_to_binary(%{
        topology: Keyword.get(opts, :topology, :k8s),
        config: opts[:config],
        strategy: Keyword.get(opts, :strategy, ClusterSRV.Strategy),
        standalone: Keyword.get(opts, :standalone, false)
      })
    )

    erl_flags = dist_flags(opts)

    ebin = Path.join(Mix.Project.app_path(), "ebin")

    args = [
      "--name",
      "#{opts[:app]}@#{opts[:host]}",
      "--cookie",
      Keyword.get(opts, :cookie, "cluster_srv"),
      "--erl",
      erl_flags,
      "-pa",
      ebin,
      "-e",
      "ClusterSRV.Harness.PodAgent.main(#{inspect(config_path)})"
    ]

    Watchdog.open(System.find_executable("elixir"), args, env: [{"ERL_INETRC", opts[:inetrc]}])
  end

  @impl true
  def handle_call({:await_ready, _timeout}, _from, %{ready_at: at} = state) when at != nil,
    do: {:reply, :ok, state}

  def handle_call({:await_ready, _timeout}, _from, %{alive: false} = state),
    do: {:reply, {:error, {:exited, Enum.reverse(state.log)}}, state}

  def handle_call({:await_ready, timeout}, from, state) do
    Process.send_after(self(), {:ready_timeout, from}, timeout)
    {:noreply, %{state | waiting: [from | state.waiting]}}
  end

  def handle_call(:members, _from, state), do: {:reply, state.members, state}

  def handle_call(:info, _from, state) do
    {:reply,
     %{
       ready_at: state.ready_at,
       members: state.members,
       history: Enum.reverse(state.history),
       connects: Enum.reverse(state.connects),
       alive: state.alive,
       log: Enum.reverse(state.log)
     }, state}
  end

  def handle_call(:kill, _from, state) do
    if state.os_pid, do: System.cmd("kill", ["-KILL", state.os_pid])
    {:reply, :ok, wait_exit(state)}
  end

  @impl true
  def handle_info({port, {:data, {_eol, line}}}, %{port: port} = state) do
    {:noreply, handle_line(line, now(), state)}
  end

  def handle_info({port, {:exit_status, _status}}, %{port: port} = state) do
    state = %{state | alive: false, members: MapSet.new()}
    notify(state, :exited, now())

    for from <- state.waiting,
        do: GenServer.reply(from, {:error, {:exited, Enum.reverse(state.log)}})

    {:noreply, %{state | waiting: []}}
  end

  def handle_info({:ready_timeout, from}, state) do
    if from in state.waiting do
      GenServer.reply(from, {:error, {:timeout, Enum.reverse(state.log)}})
    end

    {:noreply, %{state | waiting: List.delete(state.waiting, from)}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    if state.alive, do: Watchdog.close(state.port)
    :ok
  end

  defp handle_line("@@ ready " <> rest, at, state) do
    [_node, os_pid] = String.split(rest)
    for from <- state.waiting, do: GenServer.reply(from, :ok)
    notify(state, :ready, at)
    %{state | ready_at: at, os_pid: os_pid, waiting: []}
  end

  defp handle_line("@@ nodes " <> list, at, state), do: set_members(state, list, at)
  defp handle_line("@@ nodes", at, state), do: set_members(state, "", at)

  defp handle_line("@@ connect " <> node, at, state) do
    node = String.to_atom(node)
    notify(state, {:connect, node}, at)
    %{state | connects: [{at, node, :start} | state.connects]}
  end

  defp handle_line("@@ connected " <> rest, at, state) do
    [node, result, ms] = String.split(rest)
    node = String.to_atom(node)
    result = String.to_atom(result)
    notify(state, {:connected, node, result, String.to_integer(ms)}, at)
    %{state | connects: [{at, node, {result, String.to_integer(ms)}} | state.connects]}
  end

  defp handle_line(line, at, state) do
    notify(state, {:log, line}, at)
    %{state | log: Enum.take([line | state.log], 200)}
  end

  defp set_members(state, list, at) do
    members = list |> String.split(",", trim: true) |> Enum.map(&String.to_atom/1) |> MapSet.new()
    notify(state, {:members, members}, at)
    %{state | members: members, history: [{at, members} | state.history]}
  end

  defp wait_exit(%{alive: false} = state), do: state

  defp wait_exit(state) do
    receive do
      {port, {:exit_status, _}} when port == state.port ->
        notify(state, :exited, now())
        %{state | alive: false, members: MapSet.new()}

      {port, {:data, {_eol, line}}} when port == state.port ->
        wait_exit(handle_line(line, now(), state))
    after
      5_000 -> state
    end
  end

  defp notify(%{subscriber: nil}, _event, _at), do: :ok
  defp notify(state, event, at), do: send(state.subscriber, {:pod_event, state.label, event, at})

  defp now, do: System.monotonic_time(:millisecond)
end
