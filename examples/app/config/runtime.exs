import Config

# The release reads its clustering config from the environment at boot, so one image serves
# every layout (see examples/kubernetes/):
#
#   CLUSTER_SERVICE           the headless service            (default "example-headless")
#   CLUSTER_NAMESPACE         its namespace                   (default "default")
#   CLUSTER_APPLICATION_NAME  the part of node names before @ (default "example")
#   CLUSTER_POLLING_INTERVAL  milliseconds between lookups    (default 5000)
#   CLUSTER_NAMESERVERS       comma-separated "ip[:port]"     (default: the pod's resolv.conf)
#   CLUSTER_NODE_NAMING       "hostname" or "ip"              (default "hostname")
#   CLUSTER_PORT_NAME         query _<port>._tcp.<service>... (default: the service name itself)
if config_env() == :prod do
  integer = fn name, default ->
    value = System.get_env(name, default)

    case Integer.parse(value) do
      {int, ""} -> int
      _ -> raise "#{name} must be an integer number of milliseconds, got: #{inspect(value)}"
    end
  end

  cluster =
    [
      service: System.get_env("CLUSTER_SERVICE", "example-headless"),
      namespace: System.get_env("CLUSTER_NAMESPACE", "default"),
      application_name: System.get_env("CLUSTER_APPLICATION_NAME", "example"),
      polling_interval: integer.("CLUSTER_POLLING_INTERVAL", "5000"),
      node_naming: System.get_env("CLUSTER_NODE_NAMING", "hostname"),
      nameservers: String.split(System.get_env("CLUSTER_NAMESERVERS", ""), ",", trim: true)
    ] ++
      case System.get_env("CLUSTER_PORT_NAME", "") do
        "" -> []
        port_name -> [port_name: port_name]
      end

  config :example, :cluster, cluster
end
