defmodule ClusterSRV.Harness.DNS do
  @moduledoc """
  A real BIND9 serving a CoreDNS-shaped `cluster.local`: by default on 127.0.0.1 at a free high
  port, or, with `netns:`, inside a network namespace at a service address on port 53, as the
  cluster DNS of `ClusterSRV.Harness.Network`.

  The server is owned by a process linked to the caller: when the caller exits, `named` stops.
  Services change through dynamic updates (`nsupdate`), as the endpoints controller changes
  CoreDNS's view, and the server can be stopped and started again on the same port with its
  data kept, to play a DNS outage.

      dns = ClusterSRV.Harness.DNS.start!(services: [service])
      ClusterSRV.Harness.DNS.nameserver(dns)  #=> "127.0.0.1:53841"
      ClusterSRV.Harness.DNS.put_service(dns, %{service | pods: more_pods})
      ClusterSRV.Harness.DNS.stop(dns)

  In a namespace (the test VM cannot reach it, so updates and readiness checks run there too):

      dns = ClusterSRV.Harness.DNS.start!(netns: "csrv-71234567-42-net", ip: {10, 96, 0, 10}, port: 53)
      ClusterSRV.Harness.DNS.nameserver(dns)  #=> "10.96.0.10:53"

  With `forwarders:`, the server holds no zone and is a forwarding cache instead, which keeps
  every answer `cache_ttl` seconds (default 30) whatever its TTL, as NodeLocal DNSCache or
  CoreDNS's `cache 30` may serve a pod answers that old.

  With `listen_v6: true`, it also listens on every IPv6 address of its network (namespace), on
  the same port, link-local ones included. With `minimal_responses: true`, answers carry no additional section, so an SRV answer gives
  no address and a client must ask each target's. With `drops: true`, `drop/2` makes the server
  drop every query for a name (a response policy zone's `rpz-drop`, as a DNS firewall drops
  queries), until `undrop/2`; it needs recursion on for the server's own address, so names
  outside its zones are no longer refused there.

      dns = ClusterSRV.Harness.DNS.start!(minimal_responses: true, drops: true)
      ClusterSRV.Harness.DNS.drop(dns, "myapp-0.myapp-headless.default.svc.cluster.local")
  """
  use GenServer

  alias ClusterSRV.Harness.{Netns, Watchdog, Zone}

  defstruct [:pid, :port, :dir, ip: {127, 0, 0, 1}, netns: nil]

  @type t :: %__MODULE__{
          pid: pid(),
          port: :inet.port_number(),
          dir: Path.t(),
          ip: :inet.ip4_address(),
          netns: String.t() | nil
        }

  @doc """
  Starts BIND with the given `services` (see `ClusterSRV.Harness.Zone`) and any `extra` records,
  and waits until it answers. Options for a server in a namespace: `:netns`, `:ip` (the
  address to listen on, which the namespace holds), `:port`; `:forwarders` (a list of
  addresses) and `:cache_ttl` make it a forwarding cache.
  """
  def start!(opts \\ []) do
    {:ok, pid} = GenServer.start_link(__MODULE__, opts)
    GenServer.call(pid, :info)
  end

  @doc "Stops BIND and removes its files."
  def stop(%__MODULE__{pid: pid}) do
    GenServer.stop(pid)
  catch
    # Already stopped, or stopping with the process that started it.
    :exit, _ -> :ok
  end

  @doc "The nameserver as `ClusterSRV.Resolver` takes it."
  def nameserver(%__MODULE__{ip: ip, port: port}), do: "#{:inet.ntoa(ip)}:#{port}"

  @doc """
  Writes an inetrc (for `ERL_INETRC`) that makes a VM resolve host names with this server
  alone, as pods resolve through the cluster DNS. Returns its path.
  """
  def write_inetrc!(%__MODULE__{port: port}, path) do
    # Without `{resolv_conf, ""}` the system's resolv.conf would replace the nameserver.
    File.write!(path, """
    {resolv_conf, ""}.
    {hosts_file, ""}.
    {nameserver, {127,0,0,1}, #{port}}.
    {lookup, [dns]}.
    """)

    path
  end

  @doc "Stops the server process but keeps its port and data, to play an outage."
  def pause(%__MODULE__{pid: pid}), do: GenServer.call(pid, :pause, 15_000)

  @doc "Starts the server again after `pause/1`, with the same port and data."
  def resume(%__MODULE__{pid: pid}), do: GenServer.call(pid, :resume, 30_000)

  @doc """
  Freezes the server with SIGSTOP, as a node under memory pressure or a debugger stalls it: it
  keeps its sockets and connections open and answers nothing until `thaw/1`.
  """
  def freeze(%__MODULE__{pid: pid}), do: GenServer.call(pid, {:signal, "STOP"})

  @doc "Lets a frozen server run again (SIGCONT)."
  def thaw(%__MODULE__{pid: pid}), do: GenServer.call(pid, {:signal, "CONT"})

  @doc """
  Replaces everything DNS holds for the service with its current pods and ports, in one dynamic
  update, as the endpoints controller and CoreDNS would present it.
  """
  def put_service(%__MODULE__{pid: pid}, %Zone{} = service),
    do: GenServer.call(pid, {:put_service, service}, 15_000)

  @doc "Sends raw `nsupdate` lines (for example `update add ...`) in one update."
  def update!(%__MODULE__{pid: pid}, lines, zone \\ Zone.domain()),
    do: GenServer.call(pid, {:update, lines, zone}, 15_000)

  # The response policy zone of `drops: true`; a policy for `name` is written as `name.<zone>`.
  @policy_zone "rpz"

  @doc "Makes a server started with `drops: true` drop every query for `name` from now on."
  def drop(%__MODULE__{} = dns, name),
    do: update!(dns, ["update add #{policy_name(name)} 5 IN CNAME rpz-drop."], @policy_zone)

  @doc "Makes the server answer queries for `name` again after `drop/2`."
  def undrop(%__MODULE__{} = dns, name),
    do: update!(dns, ["update delete #{policy_name(name)} CNAME"], @policy_zone)

  defp policy_name(name), do: String.trim_trailing(name, ".") <> ".#{@policy_zone}."

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    services = Keyword.get(opts, :services, [])
    extra = Keyword.get(opts, :extra, [])
    dir = ClusterSRV.Harness.Watchdog.tmp_dir("cluster_srv_dns")
    records = Enum.flat_map(services, &Zone.records/1) ++ extra
    ip = Keyword.get(opts, :ip, {127, 0, 0, 1})
    File.write!(Path.join(dir, "cluster.local.zone"), Zone.render(records, ip))
    File.write!(Path.join(dir, "internal.zone"), Zone.render_zone("internal", [], ip))
    File.write!(Path.join(dir, "#{@policy_zone}.zone"), Zone.render_zone(@policy_zone, [], ip))

    state = %{
      dir: dir,
      ip: ip,
      netns: Keyword.get(opts, :netns),
      forwarders: Keyword.get(opts, :forwarders),
      cache_ttl: Keyword.get(opts, :cache_ttl, 30),
      minimal_responses: Keyword.get(opts, :minimal_responses, false),
      drops: Keyword.get(opts, :drops, false),
      listen_v6: Keyword.get(opts, :listen_v6, false),
      port: nil,
      os_port: nil,
      services: Map.new(services, &{{&1.name, &1.namespace}, &1})
    }

    case Keyword.get(opts, :port) do
      nil ->
        {:ok, start_on_free_port(state, 5)}

      port ->
        case launch(state, port) do
          {:ok, state} -> {:ok, state}
          {:error, log} -> {:stop, {:named_failed, log}}
        end
    end
  end

  @impl true
  def handle_call(:info, _from, state), do: {:reply, info(state), state}

  def handle_call(:pause, _from, state) do
    stop_named(state)
    {:reply, :ok, %{state | os_port: nil}}
  end

  def handle_call(:resume, _from, %{os_port: nil} = state) do
    case launch(state, state.port) do
      {:ok, state} -> {:reply, :ok, state}
      {:error, log} -> {:stop, {:named_failed, log}, {:error, log}, state}
    end
  end

  def handle_call({:signal, name}, _from, state) do
    :ok = signal(state, name)
    {:reply, :ok, state}
  end

  def handle_call({:put_service, service}, _from, state) do
    key = {service.name, service.namespace}
    old_names = if old = state.services[key], do: Zone.owned_names(old), else: []

    deletes =
      for name <- Enum.uniq(old_names ++ Zone.owned_names(service)), do: "update delete #{name}"

    adds = for record <- Zone.records(service), do: "update add " <> Zone.line(record)
    nsupdate!(state, deletes ++ adds)
    {:reply, :ok, put_in(state.services[key], service)}
  end

  def handle_call({:update, lines, zone}, _from, state) do
    nsupdate!(state, lines, zone)
    {:reply, :ok, state}
  end

  @impl true
  def handle_info({port, {:data, _line}}, %{os_port: port} = state), do: {:noreply, state}

  def handle_info({port, {:exit_status, status}}, %{os_port: port} = state),
    do: {:stop, {:named_exited, status, log_tail(state)}, state}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    if state.os_port, do: stop_named(state)

    File.rm_rf(state.dir)
    :ok
  end

  defp info(state),
    do: %__MODULE__{
      pid: self(),
      port: state.port,
      dir: state.dir,
      ip: state.ip,
      netns: state.netns
    }

  # Stops named and returns once it is gone, so that no named that is still shutting down shares
  # the port with the next one (BIND binds with SO_REUSEPORT). A frozen named would take its TERM
  # only once continued; the watchdog's shell is killed after 5 s, so named is too.
  defp stop_named(state) do
    named =
      case Port.info(state.os_port, :os_pid) do
        {:os_pid, sh} -> named_children(sh)
        nil -> []
      end

    signal(state, "CONT")
    Watchdog.close(state.os_port)

    for pid <- named do
      Watchdog.wait_gone(String.to_integer(pid), 5_000)
    end
  end

  # The signal goes to the named this server runs (the watchdog's child, so never a stale pid
  # file's), and returns once every thread of it has stopped (STOP) or runs again (CONT): a
  # signal is only queued when `kill` returns, and a query sent in that moment could still be
  # answered.
  defp signal(state, name) do
    with {:os_pid, sh} <- Port.info(state.os_port, :os_pid),
         [named] <- named_children(sh),
         {_, 0} <- System.cmd("kill", ["-#{name}", named], stderr_to_stdout: true),
         true <- threads_settle(named, name == "STOP", 200) do
      :ok
    else
      _ -> :error
    end
  end

  defp named_children(sh) do
    case File.read("/proc/#{sh}/task/#{sh}/children") do
      {:ok, children} ->
        for pid <- String.split(children),
            File.read("/proc/#{pid}/comm") == {:ok, "named\n"},
            do: pid

      {:error, _} ->
        []
    end
  end

  defp threads_settle(_pid, _stopped?, 0), do: false

  defp threads_settle(pid, stopped?, tries) do
    # A named that exited meanwhile has no tasks: that ends the wait at once, as a failure.
    states =
      for {:ok, tasks} <- [File.ls("/proc/#{pid}/task")],
          task <- tasks,
          {:ok, stat} <- [File.read("/proc/#{pid}/task/#{task}/stat")],
          # The state follows the command name, which is in parentheses.
          [_, rest] <- [String.split(stat, ") ", parts: 2)],
          do: String.first(rest)

    cond do
      states == [] ->
        false

      Enum.all?(states, &(&1 in ["T", "t"] == stopped?)) ->
        true

      true ->
        Process.sleep(10)
        threads_settle(pid, stopped?, tries - 1)
    end
  end

  defp start_on_free_port(_state, 0), do: raise("BIND could not start on any free port")

  defp start_on_free_port(state, tries) do
    case launch(state, free_port()) do
      {:ok, state} -> state
      {:error, _log} -> start_on_free_port(state, tries - 1)
    end
  end

  defp launch(state, port) do
    conf = Path.join(state.dir, "named.conf")
    File.write!(conf, named_conf(state, port))
    File.rm(Path.join(state.dir, "named.log"))
    user = if System.get_env("USER") == "root" or uid() == "0", do: ["-u", "root"], else: []

    args = ["-f", "-c", conf, "-n", "1", "-L", Path.join(state.dir, "named.log")] ++ user

    os_port =
      case state.netns do
        nil ->
          Watchdog.open(named_executable(), args)

        ns ->
          # `ip netns exec` execs named, so the watchdog's signal reaches named itself.
          {ip, ip_args} = Netns.exec_args(ns, [named_executable() | args])
          Watchdog.open(ip, ip_args)
      end

    state = %{state | os_port: os_port, port: port}

    if wait_ready(state, os_port, 100) do
      {:ok, state}
    else
      Watchdog.close(os_port)
      {:error, log_tail(state)}
    end
  end

  defp wait_ready(_state, _os_port, 0), do: false

  defp wait_ready(state, os_port, tries) do
    receive do
      {^os_port, {:exit_status, _}} -> false
    after
      0 ->
        if answers?(state) do
          true
        else
          Process.sleep(50)
          wait_ready(state, os_port, tries - 1)
        end
    end
  end

  defp answers?(%{netns: nil} = state) do
    match?(
      {:ok, _},
      :inet_res.resolve(~c"cluster.local", :in, :soa,
        nameservers: [{state.ip, state.port}],
        timeout: 200,
        retry: 1
      )
    )
  end

  # The test VM has no route into the namespace: ask from inside it.
  defp answers?(state) do
    case query(state, "cluster.local", "SOA") do
      {:ok, [_ | _]} -> true
      _ -> false
    end
  end

  @doc """
  Asks the server with `dig`, from inside its namespace if it has one: `{:ok, lines}` of
  `dig +short`, or `{:error, output}`. For checks of what a server answers, as a pod would see it.
  """
  def dig(%__MODULE__{} = dns, name, type), do: query(Map.from_struct(dns), name, type)

  defp query(state, name, type) do
    argv = [
      "dig",
      "+short",
      "+time=1",
      "+tries=1",
      "@#{:inet.ntoa(state.ip)}",
      "-p",
      "#{state.port}",
      name,
      type
    ]

    result =
      case state.netns do
        nil -> System.cmd(hd(argv), tl(argv), stderr_to_stdout: true)
        ns -> Netns.cmd(ns, argv)
      end

    case result do
      {output, 0} ->
        lines = String.split(output, "\n", trim: true)

        if Enum.any?(lines, &String.starts_with?(&1, ";;")),
          do: {:error, output},
          else: {:ok, lines}

      {output, _} ->
        {:error, output}
    end
  end

  # One update message holds at most 64 KB; a large change goes in several, in order. Small
  # changes (a pod or two) stay one atomic update, as the endpoints controller's would be.
  @lines_per_update 300

  defp nsupdate!(state, lines, zone \\ Zone.domain()) do
    script = Path.join(state.dir, "update-#{System.unique_integer([:positive])}.txt")

    updates =
      lines
      |> Enum.chunk_every(@lines_per_update)
      |> Enum.map_join("", fn chunk -> Enum.join(chunk, "\n") <> "\nsend\n" end)

    File.write!(
      script,
      "server #{:inet.ntoa(state.ip)} #{state.port}\nzone #{zone}\n" <> updates
    )

    result =
      case state.netns do
        nil -> System.cmd("nsupdate", ["-t", "5", script], stderr_to_stdout: true)
        ns -> Netns.cmd(ns, ["nsupdate", "-t", "5", script])
      end

    case result do
      {_, 0} ->
        File.rm(script)
        :ok

      {output, status} ->
        raise "nsupdate failed (#{status}): #{String.slice(output, 0, 500)} (script: #{script})"
    end
  end

  defp named_conf(%{forwarders: [_ | _] = forwarders} = state, port) do
    dir = state.dir
    ttl = state.cache_ttl

    # min-cache-ttl raises every TTL to the cache's, so answers really are kept that long;
    # prefetch would refresh them early, before they expire.
    """
    options {
      directory "#{dir}";
      listen-on port #{port} { #{:inet.ntoa(state.ip)}; };
      listen-on-v6 { none; };
      recursion yes;
      allow-recursion { any; };
      allow-query-cache { any; };
      forward only;
      forwarders { #{Enum.map_join(forwarders, " ", &"#{&1};")} };
      dnssec-validation no;
      notify no;
      minimal-responses no;
      max-records-per-type 0;
      min-cache-ttl #{ttl};
      max-cache-ttl #{ttl};
      max-ncache-ttl #{ttl};
      prefetch 0;
      max-cache-size 64m;
      pid-file "#{dir}/named.pid";
      session-keyfile "#{dir}/session.key";
      managed-keys-directory "#{dir}";
    };
    controls { };
    """
  end

  defp named_conf(state, port) do
    dir = state.dir
    ip = :inet.ntoa(state.ip)

    # A response policy applies only to clients that may recurse; its changes apply at once
    # (by default, at most once a minute).
    {recursion, policy, policy_zone} =
      if state.drops do
        {"recursion yes;\n  allow-recursion { #{ip}; };",
         ~s|response-policy { zone "#{@policy_zone}" min-update-interval 0; };|,
         """
         zone "#{@policy_zone}" {
           type primary;
           file "#{dir}/#{@policy_zone}.zone";
           allow-update { #{ip}; };
         };
         """}
      else
        {"recursion no;", "", ""}
      end

    listen_v6 = if state.listen_v6, do: "port #{port} { any; }", else: "{ none; }"

    """
    options {
      directory "#{dir}";
      listen-on port #{port} { #{ip}; };
      listen-on-v6 #{listen_v6};
      #{recursion}
      #{policy}
      dnssec-validation no;
      notify no;
      minimal-responses #{if state.minimal_responses, do: "yes", else: "no"};
      max-records-per-type 0;
      pid-file "#{dir}/named.pid";
      session-keyfile "#{dir}/session.key";
      managed-keys-directory "#{dir}";
    };
    controls { };
    #{policy_zone}
    zone "#{Zone.domain()}" {
      type primary;
      file "#{dir}/cluster.local.zone";
      allow-update { #{ip}; };
    };
    # Names as platforms other than Kubernetes give them (dns_cluster's "myapp.internal").
    zone "internal" {
      type primary;
      file "#{dir}/internal.zone";
      allow-update { #{ip}; };
    };
    """
  end

  defp log_tail(state) do
    case File.read(Path.join(state.dir, "named.log")) do
      {:ok, log} -> log |> String.split("\n") |> Enum.take(-20) |> Enum.join("\n")
      {:error, _} -> "(no log)"
    end
  end

  defp named_executable do
    Enum.find(["/usr/sbin/named", System.find_executable("named")], &(&1 && File.exists?(&1))) ||
      raise "named is not installed: run `make setup` (apt-get install bind9 bind9-dnsutils)"
  end

  defp uid do
    case File.read("/proc/self/status") do
      {:ok, status} ->
        case Regex.run(~r/^Uid:\s+(\d+)/m, status) do
          [_, uid] -> uid
          nil -> nil
        end

      _ ->
        nil
    end
  end

  @doc false
  # A port free for both UDP and TCP right now. BIND may still lose a race for it; start!/1 retries.
  def free_port do
    {:ok, udp} = :gen_udp.open(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(udp)

    case :gen_tcp.listen(port, ip: {127, 0, 0, 1}) do
      {:ok, tcp} ->
        :gen_tcp.close(tcp)
        :gen_udp.close(udp)
        port

      {:error, _} ->
        :gen_udp.close(udp)
        free_port()
    end
  end
end
