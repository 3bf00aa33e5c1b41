defmodule ClusterSRV.Harness.LocalCluster do
  @moduledoc """
  The part of Kubernetes our strategy lives in: a cluster DNS shaped like CoreDNS, and pods that
  are real BEAM nodes, each running `ClusterSRV.Strategy` as libcluster would start it.

  A cluster holds one headless service. Pods are added to and removed from the service's DNS
  records by dynamic updates, as the endpoints controller does (with
  `publishNotReadyAddresses: true`: a pod is listed as soon as it starts). A dead pod is an
  address listed in DNS where a listener accepts connections and never answers.

      cluster = LocalCluster.start!(dns: dns, service: "myapp-headless")
      cluster = LocalCluster.add_pods(cluster, 3)
      {:ok, ms} = LocalCluster.await_mesh(cluster, 5_000)
      LocalCluster.stop(cluster)

  Layouts:

    * `:statefulset` (default) - pods `myapp-0`, `myapp-1`, ... with host names under the
      service; the strategy asks `<service>.<namespace>.svc.cluster.local.`.
    * `:deployment` - pods with generated names (`myapp-5d8c7f9b6-x2k4j`), `hostname` set to the
      pod name and `subdomain` to the service, CoreDNS's `endpoint_pod_names` on; the service
      has the named port `discovery`, and the strategy asks `_discovery._tcp.<service>...`.
  """

  alias ClusterSRV.Harness.{DNS, Pod, Silent, Zone}

  defstruct [
    :dns,
    :dir,
    :inetrc,
    :service,
    :subnet,
    :layout,
    :app,
    :config,
    :subscriber,
    :registry,
    strategy: ClusterSRV.Strategy,
    standalone: false,
    dist_port: 4370,
    pods: %{},
    dead: %{},
    next: 0
  ]

  @doc """
  Prepares a cluster on an existing `ClusterSRV.Harness.DNS`. Options: `:service`,
  `:namespace` (default `"default"`), `:app` (default `"myapp"`), `:layout`,
  `:polling_interval` (default 1_000), `:subnet` (the first three octets of the pods'
  addresses; default a random one in 127.0.0.0/8), `:subscriber`, `:config` (extra strategy
  config), `:strategy` (the module each pod runs; default `ClusterSRV.Strategy`), `:standalone`
  (each pod runs `{ClusterSRV, config}` instead, without libcluster), `:nameservers` (`false`
  leaves them out of the config, so the strategy asks the servers the pods' VMs use).
  """
  def start!(opts) do
    dns = Keyword.fetch!(opts, :dns)
    layout = Keyword.get(opts, :layout, :statefulset)
    name = Keyword.fetch!(opts, :service)
    namespace = Keyword.get(opts, :namespace, "default")
    app = Keyword.get(opts, :app, "myapp")
    dir = ClusterSRV.Harness.Watchdog.tmp_dir("cluster_srv_pods")

    inetrc = DNS.write_inetrc!(dns, Path.join(dir, "inetrc"))

    ports =
      case layout do
        :statefulset -> [{"epmd", "tcp", 4370}]
        :deployment -> [{"http", "tcp", 4000}, {"discovery", "tcp", 4370}]
      end

    # With `nameservers: false` the strategy gets libcluster's DNSSRV config as it is and must
    # find the DNS the way the VM does: through the pods' ERL_INETRC.
    nameservers =
      if Keyword.get(opts, :nameservers, true), do: [nameservers: [DNS.nameserver(dns)]], else: []

    config =
      [
        service: name,
        namespace: namespace,
        application_name: app,
        polling_interval: Keyword.get(opts, :polling_interval, 1_000)
      ] ++
        nameservers ++
        if(layout == :deployment, do: [port_name: "discovery"], else: []) ++
        Keyword.get(opts, :config, [])

    # Everything the cluster starts is registered here, so stop/1 stops it all, whichever copy
    # of the struct it is given.
    {:ok, registry} = Agent.start_link(fn -> [] end)

    %__MODULE__{
      registry: registry,
      dns: dns,
      dir: dir,
      inetrc: inetrc,
      service: Zone.service(name, namespace, ports: ports),
      subnet:
        Keyword.get_lazy(opts, :subnet, fn -> {127, Enum.random(20..250), Enum.random(1..250)} end),
      layout: layout,
      app: app,
      config: config,
      subscriber: Keyword.get(opts, :subscriber),
      strategy: Keyword.get(opts, :strategy, ClusterSRV.Strategy),
      standalone: Keyword.get(opts, :standalone, false)
    }
  end

  @doc "Stops every pod and dead-pod listener the cluster ever started, and removes its files."
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
      end,
      timeout: 15_000
    )
    |> Stream.run()

    File.rm_rf(cluster.dir)
    :ok
  end

  defp register(%__MODULE__{registry: registry}, things),
    do: Agent.update(registry, &(things ++ &1))

  @doc "The live pods, in the order they were added."
  def pods(%__MODULE__{pods: pods}),
    do: pods |> Enum.sort_by(fn {i, _} -> i end) |> Enum.map(&elem(&1, 1))

  @doc """
  Starts `count` pods, lists them in DNS in one update, and waits until each runs its strategy.
  Returns the cluster and the new pods. With `bare: true` the pods are bare nodes that run no
  strategy (see `ClusterSRV.Harness.Pod`): live pods that only take connections.
  """
  def add_pods(%__MODULE__{} = cluster, count, opts \\ []) do
    indexes = Enum.to_list(cluster.next..(cluster.next + count - 1)//1)

    pods =
      for i <- indexes do
        label = pod_label(cluster, i)
        ip = ip(cluster, i)
        host = Zone.target(cluster.service, {label, ip})

        {i,
         Pod.start!(
           label: label,
           host: host,
           ip: ip,
           app: cluster.app,
           config: cluster.config,
           strategy: cluster.strategy,
           standalone: cluster.standalone,
           dist_port: cluster.dist_port,
           inetrc: cluster.inetrc,
           dir: cluster.dir,
           subscriber: cluster.subscriber,
           bare: Keyword.get(opts, :bare, false)
         )}
      end

    register(cluster, Enum.map(pods, &elem(&1, 1)))

    cluster = %{
      cluster
      | pods: Map.merge(cluster.pods, Map.new(pods)),
        next: cluster.next + count
    }

    publish(cluster)

    for {_, pod} <- pods do
      case Pod.await_ready(pod) do
        :ok -> :ok
        {:error, why} -> raise "pod #{pod.label} did not start: #{inspect(why, limit: :infinity)}"
      end
    end

    {cluster, Enum.map(pods, &elem(&1, 1))}
  end

  @doc "Kills a pod's VM, then removes it from DNS, as Kubernetes does with a dead pod."
  def kill_pod(%__MODULE__{} = cluster, %Pod{} = pod) do
    Pod.kill(pod)
    Pod.stop(pod)
    index = Enum.find_value(cluster.pods, fn {i, p} -> if p.pid == pod.pid, do: i end)
    cluster = %{cluster | pods: Map.delete(cluster.pods, index)}
    publish(cluster)
    cluster
  end

  @doc """
  Lists `count` dead pods in DNS. By default (`kind: :silent`) each is an address where a
  listener accepts connections and never answers, so a connect hangs until `net_setuptime`;
  with `kind: :unheld` nothing listens there. Their labels (`dead-N`) sort before the live
  pods', so a strategy that connected one node at a time would reach the live pods last.
  """
  def add_dead(%__MODULE__{} = cluster, count, opts \\ []) do
    kind = Keyword.get(opts, :kind, :silent)

    dead =
      for k <- 0..(count - 1)//1, into: %{} do
        n = map_size(cluster.dead) + k
        # Dead pods take the addresses .100 to .199, above the live pods'.
        if n >= 100, do: raise(ArgumentError, "at most 100 dead pods per cluster")
        ip = put_elem(ip(cluster, 0), 3, 100 + n)
        silent = if kind == :silent, do: Silent.start!(ip: ip, port: cluster.dist_port)
        {"dead-#{n}", {silent, ip}}
      end

    register(cluster, for({_, {silent, _}} <- dead, silent, do: silent))
    cluster = %{cluster | dead: Map.merge(cluster.dead, dead)}
    publish(cluster)
    cluster
  end

  @doc "Removes the dead pods from DNS and stops their listeners."
  def clear_dead(%__MODULE__{} = cluster) do
    Enum.each(cluster.dead, fn {_, {silent, _}} -> if silent, do: Silent.stop(silent) end)
    cluster = %{cluster | dead: %{}}
    publish(cluster)
    cluster
  end

  @doc "The node names of the dead pods."
  def dead_nodes(%__MODULE__{} = cluster) do
    for {label, {_, ip}} <- cluster.dead,
        do: :"#{cluster.app}@#{Zone.target(cluster.service, {label, ip})}"
  end

  @doc """
  Waits until every live pod is connected to every other live pod, and to nothing else.
  Returns `{:ok, ms}` (how long the wait took) or `{:error, members}` at the timeout.
  """
  def await_mesh(%__MODULE__{} = cluster, timeout), do: Pod.await_mesh(pods(cluster), timeout)

  # Rewrites the service's records: live pods and dead pods, in one update.
  defp publish(cluster) do
    live = for {i, pod} <- Enum.sort(cluster.pods), do: {pod_label(cluster, i), pod.ip}
    dead = for {label, {_, ip}} <- Enum.sort(cluster.dead), do: {label, ip}
    DNS.put_service(cluster.dns, %{cluster.service | pods: dead ++ live})
  end

  defp ip(%{subnet: {a, b, c}}, i), do: {a, b, c, 10 + i}

  defp pod_label(%{layout: :statefulset, app: app}, i), do: "#{app}-#{i}"

  # A ReplicaSet's pod names: the Deployment, a template hash, and five random characters.
  defp pod_label(%{layout: :deployment, app: app}, i) do
    suffix = :erlang.phash2({app, i}, 26 ** 5) |> Integer.to_string(26) |> String.downcase()
    "#{app}-5d8c7f9b6-#{suffix}"
  end
end
