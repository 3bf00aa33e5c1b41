defmodule ClusterSRV.Harness.Pod do
  @moduledoc """
  One pod: a real BEAM node in its own OS process.

  On the loopback cluster (`ClusterSRV.Harness.LocalCluster`) the node is named `<app>@<host>`,
  listens for distribution only on its own address, on the port every pod shares, with no
  epmd, and resolves host names through the cluster DNS given by an inetrc.

  In a pod sandbox (`:netns`, see `ClusterSRV.Harness.NetnsCluster`) it starts as a container
  starts in Kubernetes: `ip netns exec` mounts the kubelet-written `/etc/hosts` and
  `/etc/resolv.conf` of the sandbox, `unshare --uts` gives it its own host name, and the node
  names itself as the seeds do, `RELEASE_NODE=<app>@$(hostname -f)` (or `<app>@$POD_IP`). It
  runs its own epmd on 4369 and resolves its peers through the system resolver, with no inetrc.

  It runs `ClusterSRV.Harness.PodAgent`, which starts the strategy with the config given here,
  or, with `:release`, a release's `bin/<name> start`. A release's membership comes from its own
  `[<app>] cluster: ...` log lines, or, for a release that logs none (`membership: :rpc`), from
  an observer the harness runs in the pod as `kubectl exec` would: `bin/<name> rpc` with the
  pod's host name, which reports the node's name and its `Node.list()` each time it changes.

      pod = ClusterSRV.Harness.Pod.start!(label: "myapp-0", app: "myapp", netns: sandbox.ns,
              ip: sandbox.ip, hostname: "myapp-0",
              host: "myapp-0.myapp-headless.default.svc.cluster.local", config: config, dir: dir)
      :ok = ClusterSRV.Harness.Pod.await_ready(pod)
      ClusterSRV.Harness.Pod.members(pod)

  The controller process owning the pod sees each line the pod reports and keeps the pod's
  membership, the strategy's connect and disconnect calls and lookups, and the times they
  happened (monotonic ms). The pod's OS process runs under `ClusterSRV.Harness.Watchdog`, so it
  dies with its controller.
  """
  use GenServer

  alias ClusterSRV.Harness.{Netns, Watchdog}

  defstruct [:pid, :name, :label, :ip, :netns]

  @type t :: %__MODULE__{
          pid: pid(),
          name: node(),
          label: String.t(),
          ip: :inet.ip_address(),
          netns: String.t() | nil
        }

  @doc """
  Starts a pod. Options:

    * `:label`, `:host`, `:ip`, `:app` - the pod's name is `app@host`, on `ip`;
        * `:config` - the strategy's config, as a user writes it under `config :libcluster`;
        * `:strategy` - the strategy module (default `ClusterSRV.Strategy`);
    * `:standalone` - run `{ClusterSRV, config}` instead, as an app without libcluster does;
    * `:dist_port`, `:inetrc`, `:cookie` - the cluster's shared distribution settings;
    * `:dir` - where to write the pod's config;
    * `:subscriber` - a process that gets `{:pod_event, label, event, at_ms}` for each report;
    * `:bare` - on the loopback cluster, a bare `erl` node that runs no strategy and reports
      nothing but `ready`: a live pod that only takes connections, cheap enough to start by
      the dozen.

  In a pod sandbox:

    * `:netns` - the sandbox's namespace; `:ip` is then its address;
    * `:hostname` - the host name of the pod's UTS namespace;
    * `:node_host` - `:fqdn` (default) names the node `app@$(hostname -f)`, `:pod_ip` names it
      `app@$POD_IP`; `:host` is then what the harness expects, and a pod that names itself
      otherwise fails to start;
    * `:erl` - VM flags for every pod of a cluster, such as `-kernel net_ticktime 4`;
    * `:release` - the path of a release's `bin/<name>`, run with `start` and the environment
      `:env`, instead of the agent;
    * `:membership` - for a release: `:log` (default), its `[<app>] cluster: ...` lines, the
      first of which makes it ready; or `:rpc`, an observer that runs `bin/<name> rpc` in the
      sandbox (with `:env` and the pod's host name, so that `rel/env.sh` names the node as it
      named the release's) and reports the node's name, its OS pid and each change of
      `Node.list()`; the pod is ready once the observer reached the node. The observer's node
      is hidden, so it is in no one's `Node.list()`.
  """
  def start!(opts) do
    {:ok, pid} = GenServer.start_link(__MODULE__, opts)

    %__MODULE__{
      pid: pid,
      name: :"#{opts[:app]}@#{opts[:host]}",
      label: opts[:label],
      ip: opts[:ip],
      netns: opts[:netns]
    }
  end

  @doc "Waits until the strategy runs in the pod."
  def await_ready(%__MODULE__{pid: pid}, timeout \\ 20_000),
    do: GenServer.call(pid, {:await_ready, timeout}, timeout + 1_000)

  @doc "The nodes the pod is connected to."
  def members(%__MODULE__{pid: pid}), do: GenServer.call(pid, :members)

  @doc """
  Everything the pod reported: `%{ready_at, os_pid, members, history, connects, disconnects,
  lookups, vm, self_listed, alive, log}`. `lookups` are `{at, result, node_count}` for each of the strategy's lookups,
  from its telemetry (test builds only, where the `:telemetry` stand-in is compiled); `vm` are
  `{at, %{processes, fds, atoms, memory, modules}}`, the VM's own figures every 2 s (the latest 1,000);
  `self_listed` whether the strategy's latest answer listed this pod (`nil` before the first).
  """
  def info(%__MODULE__{pid: pid}), do: GenServer.call(pid, :info)

  @doc "Kills the pod's VM at once, as a crashed or evicted pod dies."
  def kill(%__MODULE__{pid: pid}), do: GenServer.call(pid, :kill, 10_000)

  @doc """
  Stops the pod as Kubernetes stops a terminating pod: SIGTERM to its VM, which stops as an
  application stops on SIGTERM, then waits for it to exit. Returns when it has.
  """
  def terminate(%__MODULE__{pid: pid}), do: GenServer.call(pid, :terminate, 30_000)

  @doc """
  Waits until each of `pods` is connected to every other one, and to nothing else. Returns
  `{:ok, ms}` (how long the wait took) or `{:error, members}` (each pod's label to the nodes it
  is connected to) at the timeout.
  """
  def await_mesh(pods, timeout) do
    started = System.monotonic_time(:millisecond)
    await_mesh(pods, started, started + timeout)
  end

  defp await_mesh(pods, started, deadline) do
    names = MapSet.new(pods, & &1.name)
    members = Map.new(pods, &{&1.label, members(&1)})
    meshed = Enum.all?(pods, &(members[&1.label] == MapSet.delete(names, &1.name)))
    now = System.monotonic_time(:millisecond)

    cond do
      meshed ->
        {:ok, now - started}

      now >= deadline ->
        {:error, members}

      true ->
        Process.sleep(20)
        await_mesh(pods, started, deadline)
    end
  end

  @doc "Stops the pod and its VM."
  def stop(%__MODULE__{pid: pid}) do
    GenServer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    label = Keyword.fetch!(opts, :label)
    name = :"#{opts[:app]}@#{opts[:host]}"

    port =
      cond do
        opts[:bare] ->
          start_bare(opts)

        opts[:release] ->
          start_release(opts)

        true ->
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

          start_agent(opts, config_path)
      end

    {:ok,
     %{
       port: port,
       label: label,
       name: name,
       release?: opts[:release] != nil,
       netns: opts[:netns],
       observe: observe(opts),
       observer: nil,
       observer_output: [],
       observer_said: nil,
       subscriber: Keyword.get(opts, :subscriber),
       os_pid: nil,
       ready_at: nil,
       waiting: [],
       members: MapSet.new(),
       history: [],
       connects: [],
       disconnects: [],
       lookups: [],
       vm: [],
       self_listed: nil,
       alive: true,
       exited_at: nil,
       failure: nil,
       log: []
     }}
  end

  defp start_bare(opts) do
    {a, b, c, d} = Keyword.fetch!(opts, :ip)

    args =
      ["-noshell", "-name", "#{opts[:app]}@#{opts[:host]}"] ++
        ["-setcookie", Keyword.get(opts, :cookie, "cluster_srv")] ++
        ["-start_epmd", "false", "-erl_epmd_port", "#{opts[:dist_port]}"] ++
        ["-kernel", "inet_dist_use_interface", "{#{a},#{b},#{c},#{d}}"] ++
        ["-eval", ~S|io:format("@@ ready ~s ~s~n", [node(), os:getpid()])|]

    Watchdog.open(System.find_executable("erl"), args)
  end

  # The code path holding the agent: the app's ebin, wherever it was built.
  defp ebin,
    do: ClusterSRV.Harness.PodAgent |> :code.which() |> List.to_string() |> Path.dirname()

  defp agent_args(opts, config_path, erl_flags) do
    [
      "--cookie",
      Keyword.get(opts, :cookie, "cluster_srv"),
      "--erl",
      erl_flags,
      "-pa",
      ebin(),
      "-e",
      "ClusterSRV.Harness.PodAgent.main(#{inspect(config_path)})"
    ]
  end

  defp start_agent(opts, config_path) do
    elixir = System.find_executable("elixir")

    case opts[:netns] do
      nil ->
        {a, b, c, d} = Keyword.fetch!(opts, :ip)

        erl_flags =
          "-start_epmd false -erl_epmd_port #{opts[:dist_port]} " <>
            "-kernel inet_dist_use_interface {#{a},#{b},#{c},#{d}} " <>
            Keyword.get(opts, :erl, "")

        args =
          ["--name", "#{opts[:app]}@#{opts[:host]}"] ++
            agent_args(opts, config_path, erl_flags)

        Watchdog.open(elixir, args, env: [{"ERL_INETRC", opts[:inetrc]}])

      ns ->
        # The node names itself, as a seed's rel/env.sh does: from its host name, which the
        # sandbox's /etc/hosts makes fully qualified, or from its pod IP.
        name_expr =
          case Keyword.get(opts, :node_host, :fqdn) do
            :fqdn -> ~S{$(hostname -f)}
            :pod_ip -> ~S{$POD_IP}
          end

        script =
          ~S{hostname "$1" || exit 1; export RELEASE_NODE="$2@} <>
            name_expr <> ~S{"; shift 2; exec "$0" --name "$RELEASE_NODE" "$@"}

        in_pod(
          ns,
          ["sh", "-c", script, elixir, opts[:hostname], opts[:app]] ++
            agent_args(opts, config_path, Keyword.get(opts, :erl, "")),
          pod_env(opts)
        )
    end
  end

  defp start_release(opts) do
    if observe(opts), do: send(self(), :observe)
    release_command(opts, ["start"])
  end

  # `bin/<name> <args>` in the pod's sandbox, under the pod's host name.
  defp release_command(opts, args) do
    script = ~S{hostname "$1" || exit 1; shift; exec "$0" "$@"}
    extra = Keyword.get(opts, :env, [])
    names = for {name, _} <- extra, do: name
    env = Enum.reject(pod_env(opts), fn {name, _} -> name in names end) ++ extra

    in_pod(
      Keyword.fetch!(opts, :netns),
      ["sh", "-c", script, opts[:release], opts[:hostname] | args],
      env
    )
  end

  # What `membership: :rpc` runs on the release's node, its output going to the observer: the
  # node's name and OS pid once, then its node list now and at each change, until the
  # observer's group leader goes (the observer was stopped, or lost the node).
  @observer ~S'''
  :ok = :net_kernel.monitor_nodes(true)
  leader = Process.monitor(Process.group_leader())
  IO.puts("@@ ready #{node()} #{System.pid()}")

  report = fn report ->
    IO.puts("@@ nodes " <> Enum.join(Node.list(), ","))

    receive do
      {event, _node} when event in [:nodeup, :nodedown] -> report.(report)
      {:DOWN, ^leader, _, _, _} -> :ok
    end
  end

  report.(report)
  '''

  defp observe(opts) do
    case Keyword.get(opts, :membership, :log) do
      :log -> nil
      :rpc -> fn -> release_command(opts, ["rpc", @observer]) end
    end
  end

  # Each of `ip netns exec`, `unshare` and `sh -c '... exec'` execs the next, so the
  # watchdog's signal reaches the VM itself.
  defp in_pod(ns, argv, env) do
    {ip, args} = Netns.exec_args(ns, ["unshare", "--uts" | argv])
    Watchdog.open(ip, args, env: env)
  end

  # What kubelet gives a container, and nothing of the test VM's own VM or DNS settings.
  defp pod_env(opts) do
    [
      {"POD_IP", List.to_string(:inet.ntoa(Keyword.fetch!(opts, :ip)))},
      {"ERL_INETRC", false},
      {"ERL_AFLAGS", false},
      {"ERL_FLAGS", false},
      {"ERL_ZFLAGS", false},
      {"ELIXIR_ERL_OPTIONS", false},
      {"RELEASE_NODE", false},
      {"NODE_HOST", false}
    ]
  end

  @impl true
  def handle_call({:await_ready, _timeout}, _from, %{ready_at: at} = state) when at != nil,
    do: {:reply, :ok, state}

  def handle_call({:await_ready, _timeout}, _from, %{failure: failure} = state)
      when failure != nil,
      do: {:reply, {:error, failure}, state}

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
       os_pid: state.os_pid,
       members: state.members,
       history: Enum.reverse(state.history),
       connects: Enum.reverse(state.connects),
       disconnects: Enum.reverse(state.disconnects),
       lookups: Enum.reverse(state.lookups),
       vm: Enum.reverse(state.vm),
       self_listed: state.self_listed,
       alive: state.alive,
       exited_at: state.exited_at,
       log: Enum.reverse(state.log)
     }, state}
  end

  def handle_call(:terminate, _from, %{os_pid: os_pid} = state) when os_pid != nil do
    System.cmd("kill", ["-TERM", os_pid])
    {:reply, :ok, wait_exit(state, 25_000)}
  end

  def handle_call(:kill, _from, state) do
    cond do
      not state.alive -> :ok
      state.os_pid -> System.cmd("kill", ["-KILL", state.os_pid])
      # A release's VM did not say its pid: every process of the sandbox dies, as a pod does.
      state.netns -> Netns.kill_all(state.netns)
      true -> :ok
    end

    {:reply, :ok, wait_exit(state)}
  end

  @impl true
  def handle_info({port, {:data, {_eol, line}}}, %{port: port} = state) do
    {:noreply, handle_line(line, now(), state)}
  end

  def handle_info({port, {:data, {_eol, "@@ " <> _ = line}}}, %{observer: port} = state),
    do: {:noreply, handle_line(line, now(), state)}

  def handle_info({port, {:data, {_eol, line}}}, %{observer: port} = state) do
    if String.trim(line) == "",
      do: {:noreply, state},
      else: {:noreply, %{state | observer_output: [line | state.observer_output]}}
  end

  # Until the node is up, and whenever the observer loses it while the pod lives, try again.
  # The log gets what an attempt said only when it differs from what the last one said.
  def handle_info({port, {:exit_status, status}}, %{observer: port} = state) do
    if state.alive, do: Process.send_after(self(), :observe, 500)
    output = Enum.reverse(state.observer_output)
    said = Enum.map(output, &String.replace(&1, ~r/^\d\d:\d\d:\d\d\.\d+ /, ""))

    log =
      if said == state.observer_said,
        do: state.log,
        else: Enum.reverse(output, ["the rpc observer exited (#{status}):" | state.log])

    {:noreply,
     %{state | observer: nil, observer_output: [], observer_said: said, log: Enum.take(log, 200)}}
  end

  def handle_info(:observe, %{alive: true, observer: nil} = state),
    do: {:noreply, %{state | observer: state.observe.()}}

  def handle_info({port, {:exit_status, _status}}, %{port: port} = state) do
    state = %{state | alive: false, members: MapSet.new(), exited_at: now()}
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
    if state.observer, do: Watchdog.close(state.observer)
    if state.alive, do: Watchdog.close(state.port)
    :ok
  end

  defp handle_line("@@ ready " <> rest, at, state) do
    [node, os_pid] = String.split(rest)

    cond do
      node != Atom.to_string(state.name) ->
        # A pod that names itself differently from what DNS lists: a harness bug, or a
        # release's rel/env.sh.
        failure = {:misnamed, node, state.name}
        reply_waiting(state, {:error, failure})
        %{state | waiting: [], failure: failure}

      # A release's observer says it again each time it reaches the node anew.
      state.ready_at ->
        %{state | os_pid: os_pid}

      true ->
        ready(%{state | os_pid: os_pid}, at)
    end
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

  defp handle_line("@@ disconnect " <> node, at, state) do
    node = String.to_atom(node)
    notify(state, {:disconnect, node}, at)
    %{state | disconnects: [{at, node} | state.disconnects]}
  end

  defp handle_line("@@ lookup " <> rest, at, state) do
    [nodes, result] = String.split(rest, " ", parts: 2)
    notify(state, {:lookup, result, String.to_integer(nodes)}, at)
    %{state | lookups: [{at, result, String.to_integer(nodes)} | state.lookups]}
  end

  defp handle_line("@@ self_listed " <> listed, at, state) do
    self_listed = listed == "true"
    notify(state, {:self_listed, self_listed}, at)
    %{state | self_listed: self_listed}
  end

  defp handle_line("@@ vm " <> rest, at, state) do
    [processes, fds, atoms, memory, modules] =
      rest |> String.split() |> Enum.map(&String.to_integer/1)

    sample = %{processes: processes, fds: fds, atoms: atoms, memory: memory, modules: modules}
    notify(state, {:vm, sample}, at)
    %{state | vm: Enum.take([{at, sample} | state.vm], 1_000)}
  end

  defp handle_line(line, at, %{release?: true} = state) do
    state = %{state | log: Enum.take([line | state.log], 200)}

    case Regex.run(~r/\[\w+\] cluster: (.*)$/, line) do
      [_, list] ->
        nodes = String.split(list, ", ", trim: true)
        me = Atom.to_string(state.name)

        if me in nodes do
          state = set_members(state, nodes |> List.delete(me) |> Enum.join(","), at)
          if state.ready_at, do: state, else: ready(state, at)
        else
          # The release named its node otherwise than DNS lists it.
          failure = {:misnamed, list, state.name}
          reply_waiting(state, {:error, failure})
          %{state | waiting: [], failure: failure}
        end

      nil ->
        notify(state, {:log, line}, at)
        state
    end
  end

  defp handle_line(line, at, state) do
    notify(state, {:log, line}, at)
    %{state | log: Enum.take([line | state.log], 200)}
  end

  defp ready(state, at) do
    reply_waiting(state, :ok)
    notify(state, :ready, at)
    %{state | ready_at: at, waiting: []}
  end

  defp reply_waiting(state, reply),
    do: for(from <- state.waiting, do: GenServer.reply(from, reply))

  defp set_members(state, list, at) do
    members = list |> String.split(",", trim: true) |> Enum.map(&String.to_atom/1) |> MapSet.new()
    notify(state, {:members, members}, at)
    %{state | members: members, history: [{at, members} | state.history]}
  end

  defp wait_exit(state, timeout \\ 5_000)
  defp wait_exit(%{alive: false} = state, _timeout), do: state

  defp wait_exit(state, timeout) do
    receive do
      {port, {:exit_status, _}} when port == state.port ->
        notify(state, :exited, now())
        %{state | alive: false, members: MapSet.new(), exited_at: now()}

      {port, {:data, {_eol, line}}} when port == state.port ->
        wait_exit(handle_line(line, now(), state), timeout)
    after
      timeout -> state
    end
  end

  defp notify(%{subscriber: nil}, _event, _at), do: :ok
  defp notify(state, event, at), do: send(state.subscriber, {:pod_event, state.label, event, at})

  defp now, do: System.monotonic_time(:millisecond)
end
