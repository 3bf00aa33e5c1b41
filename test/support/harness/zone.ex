defmodule ClusterSRV.Harness.Zone do
  @moduledoc """
  The records CoreDNS's kubernetes plugin serves for headless services, as pure data.

  A service has pods and named ports. For each ready pod and each port, the service name gets one
  SRV record (priority 0, weight ⌊100/N⌋ with a minimum of 1, where N is the number of records in
  the set) and so does `_<port>._<proto>.<service>`. Each target has an A record, and the service
  name itself has the A records of all its pods, as a headless service does.

      iex> service = ClusterSRV.Harness.Zone.service("myapp-headless", "default",
      ...>   pods: [{"myapp-0", {127, 0, 0, 10}}], ports: [{"epmd", "tcp", 4370}])
      iex> ClusterSRV.Harness.Zone.records(service) |> Enum.map(&ClusterSRV.Harness.Zone.line/1)
      ["myapp-headless.default.svc.cluster.local. 5 IN SRV 0 100 4370 myapp-0.myapp-headless.default.svc.cluster.local.",
       "_epmd._tcp.myapp-headless.default.svc.cluster.local. 5 IN SRV 0 100 4370 myapp-0.myapp-headless.default.svc.cluster.local.",
       "myapp-headless.default.svc.cluster.local. 5 IN A 127.0.0.10",
       "myapp-0.myapp-headless.default.svc.cluster.local. 5 IN A 127.0.0.10"]
  """

  @domain "cluster.local"
  @ttl 5

  defstruct [:name, :namespace, pods: [], ports: [{"epmd", "tcp", 4370}], target: :hostname]

  @type pod :: {label :: String.t(), :inet.ip4_address()}
  @type t :: %__MODULE__{
          name: String.t(),
          namespace: String.t(),
          pods: [pod()],
          ports: [{String.t(), String.t(), :inet.port_number()}],
          target: :hostname | :ip
        }

  @doc """
  A headless service. `target: :hostname` (the default) names targets after the pod's label: the
  StatefulSet hostname, or the pod name under `endpoint_pod_names`. `target: :ip` uses the dashed
  IP, as CoreDNS does for pods with neither.
  """
  def service(name, namespace, opts \\ []) do
    struct!(%__MODULE__{name: name, namespace: namespace}, opts)
  end

  @doc "The zone's apex."
  def domain, do: @domain

  @doc ~S"""
  The service's own name, with the trailing dot.

      iex> ClusterSRV.Harness.Zone.service_name(ClusterSRV.Harness.Zone.service("web", "prod"))
      "web.prod.svc.cluster.local."
  """
  def service_name(%__MODULE__{name: name, namespace: namespace}),
    do: "#{name}.#{namespace}.svc.#{@domain}."

  @doc "The `_port._proto` name of one of the service's ports."
  def port_name(service, port_name, protocol \\ "tcp"),
    do: "_#{port_name}._#{protocol}.#{service_name(service)}"

  @doc """
  The host name of a pod as DNS lists it, without the trailing dot.

      iex> svc = ClusterSRV.Harness.Zone.service("db", "default", target: :ip)
      iex> ClusterSRV.Harness.Zone.target(svc, {"db-0", {10, 1, 0, 95}})
      "10-1-0-95.db.default.svc.cluster.local"
  """
  def target(%__MODULE__{target: :hostname} = service, {label, _ip}),
    do: label <> "." <> String.trim_trailing(service_name(service), ".")

  def target(%__MODULE__{target: :ip} = service, {_label, ip}) do
    dashed = ip |> :inet.ntoa() |> List.to_string() |> String.replace([".", ":"], "-")
    dashed <> "." <> String.trim_trailing(service_name(service), ".")
  end

  @doc "Every record the service contributes, as `{name, type, data}` tuples."
  def records(%__MODULE__{pods: pods, ports: ports} = service) do
    srv_set = fn owner ->
      entries = for pod <- pods, {_, _, port} <- ports, do: {pod, port}
      weight = weight(length(entries))

      for {pod, port} <- entries,
          do: {owner, :srv, {0, weight, port, target(service, pod) <> "."}}
    end

    named_sets =
      for {port_name, protocol, port} <- ports do
        weight = weight(length(pods))

        for pod <- pods,
            do:
              {port_name(service, port_name, protocol), :srv,
               {0, weight, port, target(service, pod) <> "."}}
      end

    srv_set.(service_name(service)) ++
      List.flatten(named_sets) ++
      for({_, ip} <- pods, do: {service_name(service), address_type(ip), ip}) ++
      for pod <- Enum.uniq(pods),
          do: {target(service, pod) <> ".", address_type(elem(pod, 1)), elem(pod, 1)}
  end

  # A pod with an IPv6 address (an IPv6 service, `ipFamilies: [IPv6]`) is listed by AAAA records.
  defp address_type(ip) when tuple_size(ip) == 8, do: :aaaa
  defp address_type(_ip), do: :a

  @doc "The names the service owns, for deleting them all in a dynamic update."
  def owned_names(%__MODULE__{} = service) do
    [service_name(service)] ++
      for({port_name, protocol, _} <- service.ports, do: port_name(service, port_name, protocol)) ++
      for pod <- service.pods, do: target(service, pod) <> "."
  end

  @doc "CoreDNS's weight: ⌊100/N⌋, at least 1."
  def weight(0), do: 0
  def weight(count), do: max(div(100, count), 1)

  @doc "One record in zone-file syntax."
  def line({name, :srv, {priority, weight, port, target}}),
    do: "#{name} #{@ttl} IN SRV #{priority} #{weight} #{port} #{target}"

  def line({name, :a, ip}), do: "#{name} #{@ttl} IN A #{:inet.ntoa(ip)}"
  def line({name, :aaaa, ip}), do: "#{name} #{@ttl} IN AAAA #{:inet.ntoa(ip)}"
  def line({name, :txt, text}), do: ~s|#{name} #{@ttl} IN TXT "#{text}"|

  @doc """
  A whole zone file for `cluster.local`, holding the given records; `server` is the address of
  the zone's own name server (`ns.dns`).
  """
  def render(records, server \\ {127, 0, 0, 1}), do: render_zone(@domain, records, server)

  @doc "A whole zone file for `domain`, holding the given records."
  def render_zone(domain, records, server \\ {127, 0, 0, 1}) do
    header = """
    $ORIGIN #{domain}.
    $TTL #{@ttl}
    @ IN SOA ns.dns.#{domain}. hostmaster.#{domain}. 1 7200 1800 86400 #{@ttl}
    @ IN NS ns.dns.#{domain}.
    ns.dns IN A #{:inet.ntoa(server)}
    """

    header <> Enum.map_join(records, "", &(line(&1) <> "\n"))
  end
end
