defmodule ClusterSRV.SelfCheck do
  @moduledoc false
  # Why this node's name is not among the names DNS lists, and what the other nodes dial for this
  # pod instead: for the strategy's self-check at run time and for `mix cluster_srv.check`.
  #
  # `diagnose/4` is pure: it takes this node's name, the config, what a lookup found (records,
  # node names, rejections) and what this host is (`host/0`: its addresses, host names, and
  # whether distribution uses long names), and returns the likely causes, each with a message.
  #
  #     iex> host = %{addresses: [{10, 1, 0, 95}], names: ["web-7d9-x2k4j"], longnames?: true}
  #     iex> {config, []} = ClusterSRV.Config.strategy!(service: "web", namespace: "prod",
  #     ...>   application_name: "web", cluster_domain: "cluster.local.")
  #     iex> record = %ClusterSRV.Record{priority: 0, weight: 100, port: 4369, ttl: 5,
  #     ...>   target: "10-1-0-95.web.prod.svc.cluster.local", addresses: [{10, 1, 0, 95}]}
  #     iex> found = %{records: [record], nodes: [:"web@10-1-0-95.web.prod.svc.cluster.local"], rejected: []}
  #     iex> [cause] = ClusterSRV.SelfCheck.diagnose(:"web@web-7d9-x2k4j.web.prod.svc.cluster.local", config, found, host)
  #     iex> {cause.cause, cause.dialed}
  #     {:dashed_ip, "web@10-1-0-95.web.prod.svc.cluster.local"}

  alias ClusterSRV.{Config, Record}

  @type host :: %{
          addresses: [:inet.ip_address()],
          names: [String.t()],
          longnames?: boolean()
        }

  @type cause :: %{cause: atom(), message: String.t(), dialed: String.t() | nil}

  @dashed_ip ~r/^(\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3}|[0-9a-f]*(-[0-9a-f]*){2,7})\./

  @doc """
  The likely causes, most telling first:

    * `:short_names` - the node uses short names, and DNS names are fully qualified;
    * `:not_headless` - the only target is the service's own name;
    * `:dashed_ip` - this pod's target is its dashed IP: CoreDNS's `endpoint_pod_names` is off,
      or the pod has no `hostname` and `subdomain`, so no node is named after it;
    * `:name_mismatch` - DNS lists this pod, by address or host name, under another name than
      the node's: the `RELEASE_NODE` / `hostname -f` mismatch;
    * `:not_listed` - no target is this pod, by name or address.
  """
  @spec diagnose(node(), Config.t(), map(), host()) :: [cause()]
  def diagnose(me, %Config{} = config, %{records: records, nodes: nodes} = found, host) do
    rejected = Map.get(found, :rejected, [])

    said =
      "this node is #{inspect(me)}, but DNS does not list that name (it lists #{length(nodes)})"

    short =
      if not host.longnames? do
        [
          %{
            cause: :short_names,
            dialed: nil,
            message:
              "#{said}: it uses short names, and the names in DNS are fully qualified; " <>
                "start it with --name (RELEASE_DISTRIBUTION=name in a release)"
          }
        ]
      else
        []
      end

    not_headless =
      if Enum.any?(rejected, &match?({_, :service_itself}, &1)) do
        [
          %{
            cause: :not_headless,
            dialed: nil,
            message:
              "#{said}: the SRV target is the service's own name, so the service is not " <>
                "headless and DNS lists the service rather than its pods; set `clusterIP: None`"
          }
        ]
      else
        []
      end

    short ++ not_headless ++ [own(me, config, records, host, said)]
  end

  defp own(me, config, records, host, said) do
    case own_record(me, records, host) do
      nil ->
        %{
          cause: :not_listed,
          dialed: nil,
          message:
            "#{said}: no SRV target is this pod, by name or address, so the other nodes never " <>
              "dial it. Is the pod selected by the service, and ready (or the service " <>
              "`publishNotReadyAddresses: true`)?"
        }

      %Record{target: target} = record ->
        dialed = dialed(config, record)

        if config.node_naming == :hostname and dashed_ip?(target) do
          %{
            cause: :dashed_ip,
            dialed: dialed,
            message:
              "#{said}: the other nodes dial #{inspect(dialed)} for this pod, since its SRV target " <>
                "is its dashed IP: CoreDNS's `endpoint_pod_names` is off, or the pod has no " <>
                "`hostname` and `subdomain`. Enable `endpoint_pod_names` and set the pod's " <>
                "hostname and subdomain, or name the nodes app@${POD_IP} with node_naming: :ip"
          }
        else
          %{
            cause: :name_mismatch,
            dialed: dialed,
            message:
              "#{said}: the other nodes dial #{inspect(dialed)} for this pod. Set RELEASE_NODE=" <>
                "#{dialed} (in rel/env.sh.eex: #{config.application_name}@$(hostname -f), or " <>
                "#{config.application_name}@${POD_IP} with node_naming: :ip)"
          }
        end
    end
  end

  @doc "The record that is this pod, by host name or by address, or `nil`."
  @spec own_record(node(), [Record.t()], host()) :: Record.t() | nil
  def own_record(me, records, host) do
    names =
      case me |> Atom.to_string() |> String.split("@", parts: 2) do
        [_, name] -> MapSet.new([String.downcase(name, :ascii) | host.names])
        _ -> MapSet.new(host.names)
      end

    Enum.find(records, fn %Record{target: target, addresses: addresses} ->
      MapSet.member?(names, target) or Enum.any?(addresses, &(&1 in host.addresses))
    end)
  end

  @doc "The node name the others dial for `record`, as a string (it may be a rejected one)."
  @spec dialed(Config.t(), Record.t()) :: String.t()
  def dialed(%Config{node_naming: :ip, application_name: app}, %Record{addresses: [address | _]}),
    do: "#{app}@#{:inet.ntoa(address)}"

  def dialed(%Config{application_name: app}, %Record{target: target}), do: "#{app}@#{target}"

  @doc "Whether `target` is a dashed IP, as CoreDNS names pods that have no host name."
  @spec dashed_ip?(String.t()) :: boolean()
  def dashed_ip?(target), do: Regex.match?(@dashed_ip, target)

  @doc "What this host is: its addresses, host names, and whether distribution uses long names."
  @spec host() :: host()
  def host do
    interfaces =
      case :inet.getifaddrs() do
        {:ok, ifs} -> for {_name, opts} <- ifs, {:addr, address} <- opts, do: address
        _ -> []
      end

    addresses =
      case :application.get_env(:kernel, :inet_dist_use_interface) do
        {:ok, address} -> [address | interfaces]
        :undefined -> interfaces
      end

    names =
      case :inet.gethostname() do
        {:ok, short} -> [List.to_string(short), List.to_string(:net_adm.localhost())]
        _ -> []
      end

    %{
      addresses: addresses,
      names: Enum.map(names, &String.downcase/1),
      longnames?: :net_kernel.longnames() == true
    }
  end
end
