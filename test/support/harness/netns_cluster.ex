defmodule ClusterSRV.Harness.NetnsCluster do
  @moduledoc """
  A headless service's pods on a `ClusterSRV.Harness.Network`, each in a sandbox set up the way
  kubelet and a CNI plugin set up a pod: its own network namespace and address on the bridge,
  its own UTS namespace and host name, and the `/etc/hosts` and `/etc/resolv.conf` kubelet
  writes (`ip netns exec` mounts them from `/etc/netns/<ns>/`):

      # Kubernetes-managed hosts file.
      127.0.0.1	localhost
      ...
      10.244.0.12	myapp-2.myapp-headless.default.svc.cluster.local	myapp-2

      search default.svc.cluster.local svc.cluster.local cluster.local
      nameserver 10.96.0.10
      options ndots:5

  Each pod is a BEAM node (`ClusterSRV.Harness.Pod`) started as the seeds start one: it names
  itself `app@$(hostname -f)` (or `app@$POD_IP`), runs its own epmd on 4369, resolves its peers
  through the system resolver, and runs the strategy with no `nameservers` option, so the
  strategy reads the pod's resolv.conf and asks the cluster DNS on port 53. With `release:`,
  pods run a release's `bin/<name> start` instead, configured from `CLUSTER_*` variables as
  `examples/kubernetes` configures it (or from `release_env:`), and with `membership: :rpc`
  observed through `bin/<name> rpc` when the release logs no membership of its own.

  Pods are listed in and removed from DNS by dynamic updates, as the endpoints controller does
  with `publishNotReadyAddresses: true`: a pod is listed as soon as it starts.

      net = Network.start!()
      cluster = NetnsCluster.start!(network: net, service: "myapp-headless")
      {cluster, _pods} = NetnsCluster.add_pods(cluster, 3)
      {:ok, ms} = NetnsCluster.await_mesh(cluster, 5_000)
      NetnsCluster.partition(cluster, hd(NetnsCluster.pods(cluster)))
      NetnsCluster.stop(cluster)

  Layouts, as in `examples/kubernetes`:

    * `:statefulset` (default) - pods `myapp-0`, `myapp-1`, ... whose host names are under the
      service; the strategy asks `<service>.<namespace>.svc.cluster.local.`.
    * `:deployment` - pods with generated names (`myapp-5d8c7f9b6-x2k4j`), `subdomain` set to
      the service, CoreDNS's `endpoint_pod_names` on: the SRV targets are the pod names; the
      service has the ports `discovery` and `http`, and the strategy asks
      `_discovery._tcp.<service>...`.
    * `:pod_ip` - the same pods without a subdomain: the SRV targets are dashed IPs, nodes are
      named `app@<pod IP>`, and the strategy runs with `node_naming: :ip`.

  The same functions as `ClusterSRV.Harness.LocalCluster` (`add_pods/2`, `kill_pod/2`,
  `add_dead/2`, `clear_dead/1`, `dead_nodes/1`, `await_mesh/2`, `pods/1`, `stop/1`), so that the
  demo tells one story on either, plus faults only namespaces allow.
  """

  alias ClusterSRV.Harness.{DNS, Network, Pod, Silent, Watchdog, Zone}

  defstruct [
    :network,
    :dir,
    :service,
    :layout,
    :app,
    :config,
    :subscriber,
    :registry,
    :release,
    :nameserver,
    :release_env,
    membership: :log,
    erl: "",
    ip_family: :ipv4,
    cookie: "cluster_srv",
    strategy: ClusterSRV.Strategy,
    standalone: false,
    pods: %{},
    sandboxes: %{},
    labels: %{},
    unlisted: MapSet.new(),
    dead: %{},
    next: 0
  ]

  @doc """
  Prepares a service's cluster on a network. Options: `:network`, `:service`, `:namespace`
  (default `"default"`), `:app` (default `"myapp"`), `:layout`, `:polling_interval` (default
  1_000), `:config` (extra strategy config; with a `:query`, the pods ask that instead of the
  service), `:ports` (the service's ports, to make its answer larger), `:erl` (VM flags of
  every pod), `:nameserver` (the resolv.conf nameserver of the pods; default the cluster DNS),
  `:subscriber`, `:strategy`, `:standalone`, `:release` (a release's `bin/<name>`; `:app` is
  then the release's name), `:release_env` (the release's environment, besides what every pod
  gets; default `RELEASE_COOKIE` and the `CLUSTER_*` variables `examples/kubernetes` sets from
  the config), `:membership` (how a release's membership is observed: `:log` or `:rpc`, see
  `ClusterSRV.Harness.Pod`), and `:ip_family`: `:ipv6` gives each pod an IPv6 address besides
  its IPv4 one and makes it the pod IP, as a service with `ipFamilies: [IPv6]` on a dual-stack
  cluster sees its pods. The service then lists them by AAAA records, and the pods need
  `erl: "-proto_dist inet6_tcp"` and the `:pod_ip` layout to be reached at it. The cluster
  DNS is still reached on IPv4.
  """
  def start!(opts) do
    network = Keyword.fetch!(opts, :network)
    layout = Keyword.get(opts, :layout, :statefulset)
    name = Keyword.fetch!(opts, :service)
    namespace = Keyword.get(opts, :namespace, "default")
    app = Keyword.get(opts, :app, "myapp")

    ports =
      Keyword.get_lazy(opts, :ports, fn ->
        case layout do
          :deployment -> [{"discovery", "tcp", 4369}, {"http", "tcp", 4000}]
          _ -> [{"epmd", "tcp", 4369}]
        end
      end)

    extra = Keyword.get(opts, :config, [])

    # A `:query` in the extra config (dns_cluster's form) stands for the service's name.
    service_config =
      if Keyword.has_key?(extra, :query),
        do: [],
        else: [service: name, namespace: namespace, application_name: app]

    config =
      service_config ++
        [polling_interval: Keyword.get(opts, :polling_interval, 1_000)] ++
        layout_config(layout) ++ extra

    {:ok, registry} = Agent.start_link(fn -> [] end)
    target = if layout == :pod_ip, do: :ip, else: :hostname
    dir = Watchdog.tmp_dir("cluster_srv_pods")
    Network.track_dir(network, dir)

    %__MODULE__{
      network: network,
      registry: registry,
      dir: dir,
      service: Zone.service(name, namespace, ports: ports, target: target),
      layout: layout,
      app: app,
      config: config,
      subscriber: Keyword.get(opts, :subscriber),
      release: Keyword.get(opts, :release),
      release_env: Keyword.get(opts, :release_env),
      membership: Keyword.get(opts, :membership, :log),
      nameserver:
        Keyword.get_lazy(opts, :nameserver, fn ->
          List.to_string(:inet.ntoa(Network.dns_ip()))
        end),
      erl: Keyword.get(opts, :erl, ""),
      ip_family: Keyword.get(opts, :ip_family, :ipv4),
      strategy: Keyword.get(opts, :strategy, ClusterSRV.Strategy),
      standalone: Keyword.get(opts, :standalone, false)
    }
  end

  defp layout_config(:statefulset), do: []
  defp layout_config(:deployment), do: [port_name: "discovery"]
  defp layout_config(:pod_ip), do: [node_naming: :ip]

  @doc "Stops every pod and dead pod the cluster ever started, deletes their sandboxes and files."
  def stop(%__MODULE__{registry: registry} = cluster) do
    started =
      try do
        Agent.get(registry, & &1)
      catch
        :exit, _ -> []
      end

    started
    |> Task.async_stream(
      fn
        %Pod{} = pod -> Pod.stop(pod)
        %Silent{} = silent -> Silent.stop(silent)
        %Network.Sandbox{} -> :ok
      end,
      timeout: 15_000
    )
    |> Stream.run()

    try do
      for %Network.Sandbox{} = sandbox <- started,
          do: Network.remove_sandbox(cluster.network, sandbox)
    catch
      # The network went first (it stops with the process that started it): it has removed
      # the sandboxes itself.
      :exit, _ -> :ok
    end

    File.rm_rf(cluster.dir)
    :ok
  end

  defp register(%__MODULE__{registry: registry}, things),
    do: Agent.update(registry, &(things ++ &1))

  @doc "The live pods, in the order they were added."
  def pods(%__MODULE__{pods: pods}),
    do: pods |> Enum.sort_by(fn {i, _} -> i end) |> Enum.map(&elem(&1, 1))

  @doc "A pod's sandbox (`ClusterSRV.Harness.Network.Sandbox`)."
  def sandbox(%__MODULE__{} = cluster, %Pod{} = pod), do: cluster.sandboxes[index!(cluster, pod)]

  @doc """
  Starts `count` pods, lists them in DNS in one update, and waits until each runs. Options:
  `:nameserver`, the resolv.conf nameserver of these pods (a node's caching DNS, say);
  `:template`, the Deployment's pod template hash in their names (a rolling update's new
  ReplicaSet); `:node_host`, `:pod_ip` to name the node after its pod IP whatever the layout
  (a node named otherwise than DNS lists it). Returns the cluster and the new pods.
  """
  def add_pods(%__MODULE__{} = cluster, count, opts \\ []) do
    indexes = Enum.to_list(cluster.next..(cluster.next + count - 1)//1)

    labels =
      Map.new(indexes, fn i -> {i, pod_label(cluster, i, Keyword.get(opts, :template))} end)

    cluster = %{cluster | labels: Map.merge(cluster.labels, labels)}
    started = for i <- indexes, do: {i, start_pod(cluster, i, opts)}
    cluster = %{cluster | next: cluster.next + count}

    cluster =
      Enum.reduce(started, cluster, fn {i, {pod, sandbox}}, cluster ->
        %{
          cluster
          | pods: Map.put(cluster.pods, i, pod),
            sandboxes: Map.put(cluster.sandboxes, i, sandbox)
        }
      end)

    publish(cluster)
    pods = for {_, {pod, _}} <- started, do: pod
    Enum.each(pods, &await_ready!/1)
    {cluster, pods}
  end

  defp await_ready!(pod) do
    case Pod.await_ready(pod, 30_000) do
      :ok -> :ok
      {:error, why} -> raise "pod #{pod.label} did not start: #{inspect(why, limit: :infinity)}"
    end
  end

  # Kubelet's part: the sandbox, its files, then the container.
  defp start_pod(cluster, i, opts) do
    label = label(cluster, i)
    sandbox = Network.sandbox!(cluster.network, "pod#{i}", ipv6: cluster.ip_family == :ipv6)
    register(cluster, [sandbox])
    pod_ip = pod_ip(cluster, sandbox)
    fqdn = Zone.target(%{cluster.service | target: :hostname}, {label, pod_ip})
    nameserver = Keyword.get(opts, :nameserver, cluster.nameserver)

    write_etc!(
      sandbox.ns,
      hosts(cluster, label, fqdn, pod_ip),
      resolv_conf(cluster, nameserver)
    )

    node_host =
      Keyword.get_lazy(opts, :node_host, fn ->
        if cluster.layout == :pod_ip, do: :pod_ip, else: :fqdn
      end)

    host = if node_host == :pod_ip, do: ip_string(pod_ip), else: fqdn

    pod =
      Pod.start!(
        [
          label: label,
          host: host,
          ip: pod_ip,
          netns: sandbox.ns,
          hostname: label,
          node_host: node_host,
          app: cluster.app,
          erl: cluster.erl,
          cookie: cluster.cookie,
          dir: cluster.dir,
          subscriber: cluster.subscriber
        ] ++ container(cluster, sandbox)
      )

    register(cluster, [pod])
    {pod, sandbox}
  end

  defp container(%{release: nil} = cluster, _sandbox) do
    [config: cluster.config, strategy: cluster.strategy, standalone: cluster.standalone]
  end

  # The release's environment: the given one, or the cookie and the variables the manifests in
  # examples/kubernetes set (no CLUSTER_NAMESERVERS); RELEASE_NODE is left to rel/env.sh.
  defp container(cluster, sandbox) do
    env =
      cluster.release_env || [{"RELEASE_COOKIE", cluster.cookie} | cluster_env(cluster, sandbox)]

    [release: cluster.release, env: env, membership: cluster.membership]
  end

  defp cluster_env(cluster, sandbox) do
    config = cluster.config

    [
      {"CLUSTER_SERVICE", config[:service]},
      {"CLUSTER_NAMESPACE", config[:namespace]},
      {"CLUSTER_APPLICATION_NAME", config[:application_name]},
      {"CLUSTER_POLLING_INTERVAL", Integer.to_string(config[:polling_interval])}
    ] ++
      case cluster.layout do
        :statefulset ->
          []

        :deployment ->
          [{"CLUSTER_PORT_NAME", "discovery"}]

        :pod_ip ->
          [{"CLUSTER_NODE_NAMING", "ip"}, {"NODE_HOST", ip_string(pod_ip(cluster, sandbox))}]
      end
  end

  @doc "Kubelet's /etc/hosts for a pod: the localhost lines, then the pod's own line."
  def hosts(cluster, label, fqdn, ip) do
    own =
      case cluster.layout do
        :pod_ip -> "#{ip_string(ip)}\t#{label}"
        _ -> "#{ip_string(ip)}\t#{fqdn}\t#{label}"
      end

    """
    # Kubernetes-managed hosts file.
    127.0.0.1\tlocalhost
    ::1\tlocalhost ip6-localhost ip6-loopback
    fe00::0\tip6-localnet
    fe00::0\tip6-mcastprefix
    fe00::1\tip6-allnodes
    fe00::2\tip6-allrouters
    #{own}
    """
  end

  @doc "Kubelet's /etc/resolv.conf for a pod of the service's namespace (dnsPolicy ClusterFirst)."
  def resolv_conf(cluster, nameserver) do
    ns = cluster.service.namespace

    """
    search #{ns}.svc.cluster.local svc.cluster.local cluster.local
    nameserver #{nameserver}
    options ndots:5
    """
  end

  defp write_etc!(ns, hosts, resolv_conf) do
    dir = ClusterSRV.Harness.Netns.etc_dir(ns)
    File.mkdir_p!(dir)
    File.write!(Path.join(dir, "hosts"), hosts)
    File.write!(Path.join(dir, "resolv.conf"), resolv_conf)
  end

  @doc """
  Kills a pod's VM, deletes its sandbox and removes it from DNS, as Kubernetes does with a pod
  that dies.
  """
  def kill_pod(%__MODULE__{} = cluster, %Pod{} = pod) do
    i = index!(cluster, pod)
    Pod.kill(pod)
    Pod.stop(pod)
    Network.remove_sandbox(cluster.network, cluster.sandboxes[i])

    cluster = %{
      cluster
      | pods: Map.delete(cluster.pods, i),
        sandboxes: Map.delete(cluster.sandboxes, i)
    }

    publish(cluster)
    cluster
  end

  @doc """
  Calls `module.fun(args)` on a pod's node, from a short-lived node in the pod's own sandbox (as
  `bin/app rpc` runs inside a pod), and returns the result. What the call prints comes back as
  `{result, output}` with `output: true`. With `hidden: true` the calling node is hidden, so
  that it joins no one's node list and OTP's `global` connects it to no other pod: for
  measuring a pod without disturbing the cluster.
  """
  def rpc(%__MODULE__{} = cluster, %Pod{} = pod, module, fun, args, opts \\ []) do
    sandbox = sandbox(cluster, pod)
    name = "rpc#{System.unique_integer([:positive])}@#{ip_string(pod_ip(cluster, sandbox))}"
    dist = if cluster.ip_family == :ipv6, do: ["--erl", "-proto_dist inet6_tcp"], else: []
    dist = if Keyword.get(opts, :hidden, false), do: ["--hidden" | dist], else: dist

    code = """
    result = :rpc.call(#{inspect(pod.name)}, #{inspect(module)}, #{inspect(fun)}, \
    :erlang.binary_to_term(Base.decode64!("#{Base.encode64(:erlang.term_to_binary(args))}")), 60_000)
    IO.puts("@@result " <> Base.encode64(:erlang.term_to_binary(result)))
    """

    {ip, argv} =
      ClusterSRV.Harness.Netns.exec_args(sandbox.ns, [
        System.find_executable("elixir"),
        "--name",
        name,
        "--cookie",
        cluster.cookie
        | dist ++ ["-e", code]
      ])

    {output, _status} = System.cmd(ip, argv, stderr_to_stdout: true)

    result =
      case Regex.run(~r/^@@result (\S+)$/m, output) do
        [_, encoded] -> :erlang.binary_to_term(Base.decode64!(encoded))
        nil -> raise "rpc to #{pod.label} failed: #{output}"
      end

    if Keyword.get(opts, :output, false),
      do: {result, String.replace(output, ~r/^@@result \S+\n?/m, "")},
      else: result
  end

  @doc """
  Removes a pod from DNS and leaves it running, as a draining pod's endpoint goes away, or
  `list/2` lists it again.
  """
  def unlist(%__MODULE__{} = cluster, %Pod{} = pod) do
    cluster = %{cluster | unlisted: MapSet.put(cluster.unlisted, index!(cluster, pod))}
    publish(cluster)
    cluster
  end

  @doc "Lists a pod `unlist/2` removed from DNS again."
  def list(%__MODULE__{} = cluster, %Pod{} = pod) do
    cluster = %{cluster | unlisted: MapSet.delete(cluster.unlisted, index!(cluster, pod))}
    publish(cluster)
    cluster
  end

  @doc """
  Kills a pod and starts it again under the same name, as a StatefulSet recreates a deleted
  pod: a new sandbox with a new address, listed in DNS again once it runs. Returns the cluster
  and the new pod.
  """
  def restart_pod(%__MODULE__{} = cluster, %Pod{} = pod, opts \\ []) do
    i = index!(cluster, pod)
    cluster = kill_pod(cluster, pod)
    {new, sandbox} = start_pod(cluster, i, opts)

    cluster = %{
      cluster
      | pods: Map.put(cluster.pods, i, new),
        sandboxes: Map.put(cluster.sandboxes, i, sandbox)
    }

    publish(cluster)
    await_ready!(new)
    {cluster, new}
  end

  @doc """
  Cuts a pod off the network: `:link` (default) takes its veth down on the bridge, `:nft` drops
  all its traffic with nftables rules in its sandbox, `:reject` refuses it (TCP reset, ICMP
  unreachable), so that nothing waits on a lost packet.
  """
  def partition(%__MODULE__{} = cluster, %Pod{} = pod, how \\ :link) do
    sandbox = sandbox(cluster, pod)

    case how do
      :link -> Network.cut(cluster.network, sandbox)
      :nft -> Network.block(cluster.network, sandbox)
      :reject -> Network.block(cluster.network, sandbox, :reject)
    end
  end

  @doc "Ends a partition made by `partition/3` the same way."
  def heal(%__MODULE__{} = cluster, %Pod{} = pod, how \\ :link) do
    sandbox = sandbox(cluster, pod)

    case how do
      :link -> Network.restore(cluster.network, sandbox)
      how when how in [:nft, :reject] -> Network.unblock(cluster.network, sandbox)
    end
  end

  @doc """
  Lists `count` dead pods in DNS. `:silent` (default): each holds its address in a sandbox of
  its own, where a listener on 4369 (epmd's port) accepts connections and never answers, so a
  connect hangs until `net_setuptime`, as with a pod that is stuck but still routable.
  `:unheld`: addresses that no host holds, so a connect fails once ARP gives up. Their labels
  (`dead-N`) sort before the live pods'.
  """
  def add_dead(%__MODULE__{} = cluster, count, kind \\ :silent) do
    dead =
      for k <- 0..(count - 1)//1, into: %{} do
        label = "dead-#{map_size(cluster.dead) + k}"

        case kind do
          :silent ->
            sandbox = Network.sandbox!(cluster.network, "dead#{map_size(cluster.dead) + k}")
            register(cluster, [sandbox])

            silent =
              Silent.start!(
                ip: sandbox.ip,
                port: 4369,
                netns: ClusterSRV.Harness.Netns.path(sandbox.ns)
              )

            register(cluster, [silent])
            {label, {silent, sandbox, sandbox.ip}}

          :unheld ->
            {label, {nil, nil, Network.unheld_ip(cluster.network)}}
        end
      end

    cluster = %{cluster | dead: Map.merge(cluster.dead, dead)}
    publish(cluster)
    cluster
  end

  @doc "Removes the dead pods from DNS and deletes their sandboxes."
  def clear_dead(%__MODULE__{} = cluster) do
    dead = cluster.dead
    cluster = %{cluster | dead: %{}}
    publish(cluster)

    for {_, {silent, sandbox, _}} <- dead, silent != nil do
      Silent.stop(silent)
      Network.remove_sandbox(cluster.network, sandbox)
    end

    cluster
  end

  @doc "The node names of the dead pods."
  def dead_nodes(%__MODULE__{} = cluster) do
    for {label, {_, _, ip}} <- cluster.dead do
      case cluster.layout do
        :pod_ip -> :"#{cluster.app}@#{ip_string(ip)}"
        _ -> :"#{cluster.app}@#{Zone.target(cluster.service, {label, ip})}"
      end
    end
  end

  @doc """
  Waits until every live pod is connected to every other live pod, and to nothing else.
  Returns `{:ok, ms}` (how long the wait took) or `{:error, members}` at the timeout.
  """
  def await_mesh(%__MODULE__{} = cluster, timeout), do: Pod.await_mesh(pods(cluster), timeout)

  @doc """
  Each time, at or after `since` (monotonic ms), that a live pod lost its connection to another
  live pod, all of which DNS lists: `[{label, node, at}]`. Empty when no live, listed pod was
  disconnected from another, by anyone.
  """
  def lost_links(%__MODULE__{} = cluster, since) do
    pods = pods(cluster)
    live = MapSet.new(pods, & &1.name)

    for pod <- pods,
        history = Pod.info(pod).history,
        {{_, before}, {at, now}} <- Enum.zip(history, Enum.drop(history, 1)),
        at >= since,
        node <- MapSet.difference(before, now),
        node in live,
        do: {pod.label, node, at}
  end

  @doc """
  What every live pod reported since `since` (monotonic ms), as one timeline per pod, with
  times relative to `since`: membership, the strategy's connects, disconnects and lookups, and
  the log. For failure messages, so that a failed run explains itself.
  """
  def timeline(%__MODULE__{} = cluster, since) do
    short = fn node -> node |> Atom.to_string() |> String.split(["@", "."]) |> Enum.at(1) end

    Enum.map_join(pods(cluster), "\n", fn pod ->
      info = Pod.info(pod)

      events =
        for(
          {at, members} <- info.history,
          do: {at, "members " <> Enum.map_join(members, " ", short)}
        ) ++
          for(
            {at, node, event} <- info.connects,
            do: {at, "connect #{short.(node)} #{inspect(event)}"}
          ) ++
          for({at, node} <- info.disconnects, do: {at, "strategy disconnects #{short.(node)}"}) ++
          for {at, result, nodes} <- info.lookups, do: {at, "lookup #{result}, #{nodes} nodes"}

      lines = for {at, text} <- Enum.sort(events), at >= since, do: "  #{at - since} ms: #{text}"

      logs = for line <- info.log, String.trim(line) != "", do: "  log: " <> line

      "#{pod.label} (#{pod.name}):\n" <> Enum.join(lines ++ Enum.take(logs, -20), "\n")
    end)
  end

  @doc "The cluster's DNS service as the zone holds it now."
  def service(%__MODULE__{} = cluster), do: %{cluster.service | pods: listed(cluster)}

  # Rewrites the service's records: live pods and dead pods, in one update.
  defp publish(cluster) do
    DNS.put_service(Network.dns(cluster.network), service(cluster))
  end

  defp listed(cluster) do
    live =
      for {i, pod} <- Enum.sort(cluster.pods),
          not MapSet.member?(cluster.unlisted, i),
          do: {label(cluster, i), pod.ip}

    dead = for {label, {_, _, ip}} <- Enum.sort(cluster.dead), do: {label, ip}
    dead ++ live
  end

  defp index!(cluster, pod) do
    Enum.find_value(cluster.pods, fn {i, p} -> if p.pid == pod.pid, do: i end) ||
      raise ArgumentError, "#{pod.label} is not a live pod of this cluster"
  end

  defp ip_string(ip), do: List.to_string(:inet.ntoa(ip))

  defp pod_ip(%{ip_family: :ipv6}, sandbox), do: sandbox.ip6
  defp pod_ip(_cluster, sandbox), do: sandbox.ip

  defp label(cluster, i),
    do: Map.get_lazy(cluster.labels, i, fn -> pod_label(cluster, i, nil) end)

  defp pod_label(%{layout: :statefulset, app: app}, i, _template), do: "#{app}-#{i}"

  # A ReplicaSet's pod names: the Deployment, a template hash, and five random characters.
  defp pod_label(%{app: app}, i, template) do
    suffix = :erlang.phash2({app, i}, 26 ** 5) |> Integer.to_string(26) |> String.downcase()
    "#{app}-#{template || "5d8c7f9b6"}-#{suffix}"
  end
end
