defmodule Mix.Tasks.ClusterSrv.Check do
  @shortdoc "Checks DNS SRV clustering: what DNS lists, the node names, and this node"

  @moduledoc """
  Looks up the SRV records the strategy would use, and says what it would do with them.

      mix cluster_srv.check --service S --namespace N --application-name A
                            [--port-name P] [--protocol tcp] [--query Q] [--cluster-domain D]
                            [--nameserver IP:PORT]... [--node-naming hostname|ip] [--timeout MS]

  It runs the strategy's own code path (`ClusterSRV.Strategy.discover/1`) and prints:

    * the query name;
    * each record: priority, weight, port, target, TTL and addresses;
    * the node names the strategy would connect to;
    * each rejected target, with its reason.

  Then it checks this node: whether it is distributed, whether it uses long names, and whether
  its own name is among the node names; when it is not, it says what the other nodes will dial
  instead. It ends with hints for what it found: SRV targets in dashed-IP form, a name that
  does not exist, targets outside the service's domain, a service that is not headless.

  Exit status: 0 when the lookup succeeded and at least one node name came out; 1 otherwise; 2
  for a usage error, such as a missing required flag.

  ## The live strategy

      mix cluster_srv.check --live [--topology T]

  prints what the strategies running on this node know (`ClusterSRV.status/1`): the last
  lookup, the nodes listed, connected, connecting and unreachable, pending removals, and
  whether this node is listed. It is meant for the node itself, over the release's rpc (below).
  It exits 1 when no strategy runs there.

  ## Examples

      mix cluster_srv.check --service myapp-headless --namespace default --application-name myapp

      mix cluster_srv.check --service web-headless --namespace prod --application-name web \\
        --port-name discovery --nameserver 10.96.0.10

  To check from inside a pod running a release, where Mix is not available, call the task on
  the live node, which also checks that node's own name:

      bin/myapp rpc 'Mix.Tasks.ClusterSrv.Check.run(~w(--service myapp-headless --namespace default --application-name myapp))'
      bin/myapp rpc 'Mix.Tasks.ClusterSrv.Check.run(~w(--live))'
  """
  use Mix.Task

  alias ClusterSRV.{Config, Reasons, Record, Resolver, SelfCheck, Strategy}

  @switches [
    service: :string,
    namespace: :string,
    application_name: :string,
    port_name: :string,
    protocol: :string,
    query: :string,
    cluster_domain: :string,
    nameserver: :keep,
    node_naming: :string,
    timeout: :integer,
    live: :boolean,
    topology: :string,
    help: :boolean
  ]

  @impl true
  def run(argv) do
    case parse(argv) do
      {:ok, config} -> config |> check() |> finish()
      {:live, topology} -> topology |> live() |> finish()
      {:usage, message} -> usage(message)
    end
  end

  # -- Arguments -------------------------------------------------------------------------------

  defp parse(argv) do
    case OptionParser.parse(argv, strict: @switches) do
      {opts, [], []} ->
        cond do
          opts[:help] ->
            {:usage, nil}

          opts[:live] ->
            {:live, opts[:topology]}

          !opts[:application_name] ->
            {:usage, "--application-name is required"}

          !opts[:query] and !(opts[:service] && opts[:namespace]) ->
            {:usage, "--service and --namespace are required (or --query)"}

          true ->
            build_config(opts)
        end

      {_opts, extra, []} when extra != [] ->
        {:usage, "unexpected argument(s): #{Enum.join(extra, " ")}"}

      {_opts, _extra, invalid} ->
        {:usage,
         "invalid option(s): " <>
           Enum.map_join(invalid, ", ", fn {flag, value} -> "#{flag} #{value}" end)}
    end
  end

  defp build_config(opts) do
    nameservers = Keyword.get_values(opts, :nameserver)

    config =
      opts
      |> Keyword.drop([:nameserver, :help, :live, :topology])
      |> Keyword.put(:timeout, Keyword.get(opts, :timeout, 2_000))
      |> then(fn config ->
        if nameservers == [], do: config, else: Keyword.put(config, :nameservers, nameservers)
      end)

    {validated, _unknown} = Config.strategy!(config)
    {:ok, validated}
  rescue
    error in ArgumentError -> {:usage, Exception.message(error)}
  end

  defp usage(message) do
    if message, do: IO.puts(:stderr, "error: #{message}\n")

    IO.puts(:stderr, """
    usage: mix cluster_srv.check --service S --namespace N --application-name A
                                 [--port-name P] [--protocol tcp] [--query Q] [--cluster-domain D]
                                 [--nameserver IP:PORT]... [--node-naming hostname|ip] [--timeout MS]
           mix cluster_srv.check --live [--topology T]

    See `mix help cluster_srv.check`.\
    """)

    exit({:shutdown, 2})
  end

  defp finish(:ok), do: :ok
  defp finish(:failed), do: exit({:shutdown, 1})

  # -- The live strategies -----------------------------------------------------------------------

  defp live(topology) do
    names =
      for name <- Process.registered(),
          "Elixir.ClusterSRV.Strategy." <> topology_name <- [Atom.to_string(name)],
          topology == nil or topology_name == topology,
          do: name

    statuses =
      for name <- names,
          status = ClusterSRV.status(Process.whereis(name) || name),
          is_map(status),
          do: status

    if statuses == [] do
      which = if topology, do: "of topology #{topology} ", else: ""
      result("FAILED: no ClusterSRV strategy #{which}runs on #{inspect(Node.self())}")
      :failed
    else
      Enum.each(statuses, &print_status/1)
      :ok
    end
  end

  defp print_status(status) do
    last =
      case status.last_lookup do
        nil ->
          "none yet"

        %{at: at, result: result, duration_us: us} ->
          "#{DateTime.to_iso8601(at)}: #{describe_result(result)} (#{us} µs)"
      end

    pending =
      for {node, due} <- status.pending_removals,
          do: "#{inspect(node)} in #{max(due - System.monotonic_time(:millisecond), 0)} ms"

    unreachable = for {node, why} <- status.unreachable, do: "#{inspect(node)}: #{inspect(why)}"

    section("Topology #{inspect(status.topology)} on #{inspect(status.node)}", [
      "query: #{status.query}",
      "last lookup: #{last}; failures in a row: #{status.failures}",
      "this node listed: #{inspect(status.self_listed)}#{if status.leaving, do: " (leaving)", else: ""}",
      "listed (#{length(status.listed)}): #{names(status.listed)}",
      "connected (#{length(status.connected)}): #{names(status.connected)}",
      "connecting (#{length(status.connecting)}): #{names(status.connecting)}",
      "unreachable (#{length(unreachable)}): #{if unreachable == [], do: "-", else: Enum.join(unreachable, ", ")}",
      "pending removals (#{length(pending)}): #{if pending == [], do: "-", else: Enum.join(pending, ", ")}"
    ])
  end

  defp describe_result(:ok), do: "ok"
  defp describe_result({:error, reason}), do: "failed, #{Reasons.describe_failure(reason)}"

  defp names([]), do: "-"
  defp names(nodes), do: Enum.map_join(nodes, ", ", &inspect/1)

  # -- The check -------------------------------------------------------------------------------

  defp check(%Config{} = config) do
    nameservers =
      case Resolver.new(config.resolver_options) do
        {:ok, %Resolver{source: source, servers: servers}} ->
          Enum.join(servers, ", ") <> describe_source(source)

        {:error, reason} ->
          "no server (#{Reasons.describe_failure(reason)})"
      end

    section("Query", ["#{config.query} (SRV), asking #{nameservers}"])

    case Strategy.discover(config) do
      {:ok, %{records: records, nodes: nodes, rejected: rejected}} ->
        print_records(records)

        section(
          "Node names the strategy would connect to (#{length(nodes)})",
          Enum.map(nodes, &inspect/1)
        )

        print_rejected(rejected, config)
        self_check(config, records, nodes)
        hints(config, records, rejected)

        if nodes == [] do
          result(
            "FAILED: the answer holds no valid node name; the strategy would keep every node it knows"
          )

          :failed
        else
          result("OK: #{length(nodes)} node name(s)")
          :ok
        end

      {:error, reason} ->
        section("Lookup failed", [Reasons.describe_failure(reason)])
        self_check(config, [], [])
        hints_for_error(config, reason)
        result("FAILED: #{inspect(reason)}")
        :failed
    end
  end

  defp print_records(records) do
    rows =
      for %Record{} = r <- records do
        addresses =
          if r.addresses == [],
            do: "-",
            else: Enum.map_join(r.addresses, ",", &to_string(:inet.ntoa(&1)))

        [
          to_string(r.priority),
          to_string(r.weight),
          to_string(r.port),
          r.target,
          to_string(r.ttl),
          addresses
        ]
      end

    section(
      "Records (#{length(records)})",
      table(["priority", "weight", "port", "target", "ttl", "addresses"], rows)
    )
  end

  defp print_rejected([], _config), do: :ok

  defp print_rejected(rejected, config) do
    lines =
      for {target, reason} <- rejected,
          do:
            "#{inspect(target)}: #{Reasons.describe_rejection(reason, domain: config.domain, max_nodes: config.max_nodes)}"

    section("Rejected targets (#{length(rejected)})", lines)
  end

  # -- This node --------------------------------------------------------------------------------

  defp self_check(config, records, nodes) do
    me = Node.self()

    lines =
      cond do
        me == :nonode@nohost ->
          [
            "✗ not distributed: run the check on the node itself (bin/app rpc ..., see `mix help " <>
              "cluster_srv.check`), or start with --name #{config.application_name}@<host>"
          ]

        :net_kernel.longnames() != true ->
          [
            "✗ #{inspect(me)} uses short names; DNS names are fully qualified: use --name (RELEASE_DISTRIBUTION=name)"
          ]

        me in nodes ->
          [
            "✓ #{inspect(me)} is distributed with long names, and its name is among the node names"
          ]

        true ->
          [
            "✓ #{inspect(me)} is distributed with long names",
            "✗ its name is not among the node names"
          ] ++
            dialed_instead(config, records, me)
      end

    section("This node", lines)
  end

  # Which record is this node's, by host name or address, and what the others will dial for it.
  defp dialed_instead(config, records, me) do
    case SelfCheck.own_record(me, records, SelfCheck.host()) do
      nil ->
        ["  no SRV target is this node, by name or address: the other nodes will never dial it"]

      record ->
        dialed = SelfCheck.dialed(config, record)

        [
          # A string, not an atom: this target may be one the strategy rejected.
          "  the other nodes will dial #{inspect(dialed)} for this pod, but it is named #{inspect(me)}:",
          "  set RELEASE_NODE=#{dialed} (in rel/env.sh.eex: #{config.application_name}@$(hostname -f), or " <>
            "#{config.application_name}@$(POD_IP) with node_naming: :ip)"
        ]
    end
  end

  # -- Hints -------------------------------------------------------------------------------------

  defp hints(config, records, rejected) do
    hints =
      [
        dashed_ip_hint(config, records),
        outside_hint(config, rejected),
        service_itself_hint(rejected)
      ]
      |> Enum.reject(&is_nil/1)

    if hints != [], do: section("Hints", hints)
  end

  defp dashed_ip_hint(config, records) do
    dashed = Enum.filter(records, &SelfCheck.dashed_ip?(&1.target))

    if dashed != [] and config.node_naming == :hostname do
      "the SRV targets are dashed IPs (#{inspect(hd(dashed).target)}): the pods have no host name in " <>
        "DNS, so no node is named after them. Either enable CoreDNS's `endpoint_pod_names` option " <>
        "(in the kubernetes plugin of its Corefile) and give the pods a hostname and a subdomain " <>
        "matching the service, or name the nodes after their IP (RELEASE_NODE=app@$(POD_IP)) and " <>
        "use `node_naming: :ip`."
    end
  end

  defp outside_hint(config, rejected) do
    outside = for {target, :outside_domain} <- rejected, do: target

    if outside != [] do
      "#{length(outside)} target(s) lie outside #{config.domain} (#{inspect(hd(outside))}): the strategy " <>
        "ignores them. Is this the right service and namespace, and is the DNS answer the cluster's?"
    end
  end

  defp service_itself_hint(rejected) do
    if Enum.any?(rejected, fn {_, reason} -> reason == :service_itself end) do
      "the SRV target is the service's own name: the service is not headless, so DNS lists the " <>
        "service rather than its pods. Set `clusterIP: None` on the service."
    end
  end

  defp hints_for_error(config, :nxdomain) do
    causes =
      if String.starts_with?(config.query, "_") do
        [
          "the service has no port with that name: the _<port>._<proto> form needs a named port " <>
            "(ports[].name) on the service, and --protocol must match it (tcp by default)"
        ]
      else
        []
      end ++
        [
          "a wrong service or namespace: the name asked is #{config.query}",
          "no ready pods: DNS lists a pod only once it is ready, unless the service sets " <>
            "`publishNotReadyAddresses: true`, which clustering before readiness needs",
          "a service without ports: SRV records exist only for a service's ports"
        ] ++
        if config.domain do
          domain = config.query |> String.split(".svc.") |> List.last()

          [
            "a cluster domain other than #{inspect(domain)}: set --cluster-domain (CLUSTER_DOMAIN)"
          ]
        else
          []
        end

    section("Hints", [
      "the name does not exist (NXDOMAIN). Likely causes:" | Enum.map(causes, &("  - " <> &1))
    ])
  end

  defp hints_for_error(_config, :no_records) do
    section("Hints", [
      "the name exists but holds no SRV records: is it a headless service with ports?"
    ])
  end

  defp hints_for_error(_config, reason) when reason in [:timeout, :servfail, :refused] do
    section("Hints", [
      "the DNS server did not answer usefully: check --nameserver (or the pod's resolv.conf); " <>
        "CoreDNS answers SERVFAIL until it has synced with the API server"
    ])
  end

  defp hints_for_error(_config, _reason), do: :ok

  # -- Output ------------------------------------------------------------------------------------

  defp describe_source(:nameservers), do: ""
  defp describe_source(:vm), do: " (the VM's resolver settings)"
  defp describe_source(:resolv_conf), do: " (from /etc/resolv.conf)"

  defp section(title, lines) do
    IO.puts("\n#{title}:")
    Enum.each(lines, &IO.puts("  " <> &1))
  end

  defp result(text), do: IO.puts("\n#{text}")

  defp table(header, rows) do
    widths =
      Enum.reduce([header | rows], List.duplicate(0, length(header)), fn row, widths ->
        Enum.zip_with(row, widths, &max(String.length(&1), &2))
      end)

    for row <- [header | rows] do
      row
      |> Enum.zip(widths)
      |> Enum.map_join("  ", fn {cell, width} -> String.pad_trailing(cell, width) end)
      |> String.trim_trailing()
    end
  end
end
