defmodule Mix.Tasks.ClusterSrv.Check do
  @shortdoc "Checks clustering from DNS: what DNS lists, the node names, and whether this node is one"

  @usage """
  mix cluster_srv.check --query NAME [--query BASENAME=NAME]... [--resource-types a,aaaa,srv]
  mix cluster_srv.check --service S --namespace N --application-name A [--port-name P]
                        [--protocol tcp] [--cluster-domain D] [--resource-types srv,a,aaaa]
  mix cluster_srv.check --query NAME --application-name A [--resource-types srv,a,aaaa]
      any of these:     [--node-naming hostname|ip] [--nameserver IP[:PORT]]... [--timeout MS]
  mix cluster_srv.check --live [--topology T]
  mix cluster_srv.check --help\
  """

  @moduledoc """
  Checks that DNS lists the nodes of a cluster under the names they have, and that this node is
  one of them: run it on a node before it takes traffic, and gate the deploy on its exit status.

  Paste the options of your child spec as flags:

      # {ClusterSRV, query: "myapp.internal"} (Phoenix's dns_cluster form)
      mix cluster_srv.check --query myapp.internal

      # {ClusterSRV, service: "myapp-headless", namespace: "default", application_name: "myapp"}
      mix cluster_srv.check --service myapp-headless --namespace default --application-name myapp

      # On a running release, where Mix is not available: the check runs on that node, with
      # its own name, and bin/myapp exits with the check's status.
      bin/myapp rpc 'Mix.Tasks.ClusterSrv.Check.run(~w(--query myapp.internal))'

  ## Usage

  #{String.replace(@usage, ~r/^/m, "    ")}

  It makes the strategy's own poll, once (the same lookup code), asks each SRV name again for
  its records, and prints:

    * each query: the name, the record type and how its nodes are named; for SRV, each record
      (priority, weight, port, target, TTL, addresses); the node names it gave; its failure, if
      it failed; the SRV targets whose address could not be looked up (unresolved, with why);
      the targets or addresses rejected, with why;
    * the node names the strategy would connect to;
    * this node: whether it is distributed, whether it uses long names, and whether its name
      is among the node names; when it is not, what the other nodes will dial instead;
    * hints for what it found: SRV targets in dashed-IP form, a name that does not exist,
      targets outside the service's domain, a service that is not headless.

  ## Flags

    * `--query NAME` - a DNS name to ask (`query:`). Repeat it for several queries. Written
      `--query BASENAME=NAME`, it names that query's nodes `BASENAME@...` (`{basename, name}`).
      Without `--application-name` this is dns_cluster's form: the nodes are named
      `<basename>@<address>`, the basename being this node's own (the part of `node()` before
      `@`, as dns_cluster takes it), and A and AAAA records are asked.
    * `--service S`, `--namespace N` - a Kubernetes headless service, asked as
      `S.N.svc.<cluster domain>` (`_P._tcp.S.N.svc...` with `--port-name P`); its SRV targets
      must lie under that name. `--protocol` (default `tcp`) goes with `--port-name`, and
      `--cluster-domain` (default `$CLUSTER_DOMAIN`, else `cluster.local.`) with both.
    * `--application-name A` - the nodes' base name, `A@...`: required with `--service`; with
      `--query` it leaves dns_cluster's form, and SRV records are asked by default.
    * `--resource-types LIST` - the record types to ask for each name, comma-separated among
      `a`, `aaaa` and `srv` (`resource_types:`). Default `a,aaaa` in dns_cluster's form, else
      `srv`.
    * `--node-naming hostname|ip` - how an SRV target becomes a node: `A@<target>`, or
      `A@<its address>`. Default `ip` in dns_cluster's form, else `hostname`. A and AAAA
      records always name `A@<address>`.
    * `--nameserver IP[:PORT]` - a server to ask (`10.96.0.10`, `10.96.0.10:53`,
      `[fd00::a]:53`, `fe80::1%eth0`), repeatable. Default: the VM's resolver settings, else
      `/etc/resolv.conf`, as the strategy.
    * `--timeout MS` - the time allowed for each try (two tries). Default 2000.

  ## Exit status

    * `0` - DNS answered, at least one valid node name came out, and this node's name is among
      them. On a node that is not distributed (plain `mix`), that last part cannot be checked:
      the check says so and exits 0 on DNS alone; run it on the node (above) to check the node.
    * `1` - the lookup failed or found no valid node name: a query failed (no answer in time,
      SERVFAIL, refused...), even while others answered; an SRV target's address could not be
      looked up (it is shown unresolved, with why); or the answers held no valid node name. A
      name that does not exist, or has no records of a type, lists no one, which is no failure
      when another query names nodes: an IPv4-only name has no AAAA records, which
      dns_cluster's form asks.
    * `2` - a usage error: an unknown flag (the nearest known one is named), a missing flag, or
      a bad value. It is one line on stderr, naming the flag and the value.
    * `3` - DNS lists nodes, but not this node's name, so the other nodes would never dial this
      one: a node named `app@$(hostname -f)` while DNS gives addresses, SRV targets in
      dashed-IP form that no node name matches, a node with short names.

  When several apply, the status is the first of 2, 1 and 3.

  ## The live strategy

      mix cluster_srv.check --live [--topology T]

  prints what the strategies running on this node know (`ClusterSRV.status/1`): their queries,
  the last lookup, each query failing now with why, the nodes listed, connected, connecting and
  unreachable, pending removals, and whether this node is listed. It is meant for the node
  itself, over the release's rpc:

      bin/myapp rpc 'Mix.Tasks.ClusterSrv.Check.run(~w(--live))'

  It exits 0, or 1 when no strategy runs there.
  """
  use Mix.Task

  alias ClusterSRV.{Config, Lookup, Reasons, Record, Resolver, SelfCheck}

  @switches [
    query: :keep,
    service: :string,
    namespace: :string,
    application_name: :string,
    port_name: :string,
    protocol: :string,
    cluster_domain: :string,
    resource_types: :string,
    node_naming: :string,
    nameserver: :keep,
    timeout: :integer,
    live: :boolean,
    topology: :string,
    help: :boolean
  ]

  # The config key each flag gives, so that a message of the config's names the flag instead.
  @flag_of_key %{
    query: "--query",
    service: "--service",
    namespace: "--namespace",
    application_name: "--application-name",
    port_name: "--port-name",
    protocol: "--protocol",
    cluster_domain: "--cluster-domain",
    resource_types: "--resource-types",
    node_naming: "--node-naming",
    nameservers: "--nameserver",
    timeout: "--timeout"
  }

  # What a flag takes, where the config's words (atoms, lists) are not a command line's.
  @expected %{
    query:
      ~s|a DNS name (labels of letters, digits, "-" and "_" that do not start with "-", at | <>
        ~s|most 63 characters each and 253 in all), or BASENAME=NAME with a basename of | <>
        ~s|letters, digits, "_", "-" and "."|,
    node_naming:
      "hostname (nodes named <basename>@<SRV target>) or ip (nodes named <basename>@<address>)",
    resource_types: "a comma-separated list of a, aaaa and srv, such as a,aaaa",
    nameservers:
      "an IP address with an optional port, such as 10.96.0.10, 10.96.0.10:53, " <>
        "[fd00::a]:53, or fe80::1%eth0 for a link-local server"
  }

  @impl true
  def run(argv) do
    case parse(argv) do
      {:check, config, form} -> config |> check(form) |> finish()
      {:live, topology} -> topology |> live() |> finish()
      :help -> IO.puts("usage: " <> String.replace(@usage, "\n", "\n       "))
      {:usage, message} -> usage_error(message)
    end
  end

  # -- Arguments -------------------------------------------------------------------------------

  defp parse(argv) do
    {opts, args, invalid} = OptionParser.parse(argv, strict: @switches)

    cond do
      invalid != [] -> {:usage, invalid_flag(hd(invalid))}
      args != [] -> {:usage, "unexpected argument(s): #{Enum.join(args, " ")}"}
      opts[:help] -> :help
      opts[:live] -> live_opts(opts)
      Keyword.has_key?(opts, :topology) -> {:usage, "--topology goes with --live"}
      true -> build_config(opts)
    end
  end

  defp live_opts(opts) do
    case Keyword.keys(opts) -- [:live, :topology] do
      [] -> {:live, opts[:topology]}
      [key | _] -> {:usage, "--live takes only --topology, got: #{flag(key)}"}
    end
  end

  defp invalid_flag({flag, value}) do
    known = known_flags()

    cond do
      flag not in known -> unknown_flag(flag, known)
      value == nil -> "missing value for #{flag}"
      flag in ["--live", "--help"] -> "#{flag} takes no value, got: #{flag}=#{value}"
      true -> "invalid #{flag} #{value}: expected an integer of milliseconds"
    end
  end

  defp known_flags, do: for({key, _type} <- @switches, do: flag(key))

  # The nearest known flag, by Jaro distance without the dashes, when it is near enough to be
  # the one meant.
  defp unknown_flag(flag, known) do
    bare = String.trim_leading(flag, "-")

    {distance, nearest} =
      known
      |> Enum.map(&{String.jaro_distance(bare, String.trim_leading(&1, "-")), &1})
      |> Enum.max()

    if distance >= 0.8,
      do: "unknown flag #{flag}; did you mean #{nearest}?",
      else: "unknown flag #{flag}"
  end

  defp flag(key), do: "--" <> String.replace(Atom.to_string(key), "_", "-")

  defp build_config(opts) do
    with :ok <- required(opts),
         {:ok, queries} <- queries(Keyword.get_values(opts, :query)),
         {:ok, types} <- resource_types(opts[:resource_types]),
         {:ok, nameservers} <- nameservers(Keyword.get_values(opts, :nameserver)) do
      config =
        opts
        |> Keyword.drop([:query, :nameserver, :resource_types])
        |> Kernel.++(
          case queries do
            [] -> []
            [query] -> [query: query]
            queries -> [query: queries]
          end
        )
        |> then(&if(types, do: [{:resource_types, types} | &1], else: &1))
        |> then(&if(nameservers == [], do: &1, else: [{:nameservers, nameservers} | &1]))

      form =
        cond do
          queries == [] -> :kubernetes
          opts[:application_name] -> :query
          true -> :dns_cluster
        end

      strategy_config(config, form)
    end
  end

  defp required(opts) do
    cond do
      Keyword.has_key?(opts, :query) ->
        :ok

      !(opts[:service] && opts[:namespace]) ->
        {:usage, "--service and --namespace are required (or --query)"}

      !opts[:application_name] ->
        {:usage, "--application-name is required with --service"}

      true ->
        :ok
    end
  end

  # Each --query alone, so that a bad one is named as it was given.
  defp queries(values) do
    Enum.reduce_while(values, {:ok, []}, fn value, {:ok, queries} ->
      query =
        case String.split(value, "=", parts: 2) do
          [basename, name] -> {basename, name}
          [name] -> name
        end

      try do
        Config.strategy!(query: query)
        {:cont, {:ok, queries ++ [query]}}
      rescue
        ArgumentError ->
          {:halt, {:usage, "invalid --query #{value}: expected #{@expected.query}"}}
      end
    end)
  end

  defp resource_types(nil), do: {:ok, nil}

  defp resource_types(value) do
    types = value |> String.downcase() |> String.split(",") |> Enum.map(&String.trim/1)

    if types != [] and Enum.all?(types, &(&1 in ~w(a aaaa srv))),
      do: {:ok, Enum.map(types, &String.to_existing_atom/1)},
      else: {:usage, "invalid --resource-types #{value}: expected #{@expected.resource_types}"}
  end

  # Each --nameserver alone, parsed as the resolver parses it, so that a bad one is a usage
  # error naming it rather than a crash at the lookup.
  defp nameservers(values) do
    Enum.reduce_while(values, {:ok, []}, fn value, {:ok, nameservers} ->
      try do
        _ = Resolver.new(nameservers: [value])
        {:cont, {:ok, nameservers ++ [value]}}
      rescue
        error in ArgumentError ->
          why =
            case Regex.run(~r/is not a nameserver \((.*)\); expected/s, Exception.message(error)) do
              [_, why] -> why <> "; expected "
              nil -> "expected "
            end

          {:halt, {:usage, "invalid --nameserver #{value}: #{why}#{@expected.nameservers}"}}
      end
    end)
  end

  defp strategy_config(config, form) do
    {validated, _unknown} = Config.strategy!(config)
    {:check, validated, form}
  rescue
    error in ArgumentError -> {:usage, flag_message(Exception.message(error))}
  end

  # A message of the config's, in flags: "invalid --flag VALUE: expected ...", its config
  # example left out, and every key it names written as its flag.
  defp flag_message(message) do
    message = String.replace(message, ~r/\. Example: .*\z/s, "")

    case Regex.run(~r/\Ainvalid value for :(\w+): expected (.*), got: (.*)\z/s, message) do
      [_, key, expected, got] ->
        key = String.to_existing_atom(key)
        expected = Map.get(@expected, key, in_flags(expected))
        "invalid #{Map.get(@flag_of_key, key, key)} #{as_typed(got)}: expected #{expected}"

      nil ->
        in_flags(message)
    end
  end

  # A string value as it was typed, not as the config inspects it.
  defp as_typed(got) do
    case Regex.run(~r/\A"([^"\\]*)"\z/, got) do
      [_, typed] -> typed
      nil -> got
    end
  end

  defp in_flags(text) do
    Enum.reduce(@flag_of_key, text, fn {key, flag}, text ->
      text
      |> String.replace(~r/(?<![\w-]):#{key}\b/, flag)
      |> String.replace(~r/(?<![\w:-])\b#{key}: /, flag <> " ")
    end)
  end

  # One line, for scripts and deploy logs: what is wrong, naming the flag and the value.
  defp usage_error(message) do
    IO.puts(:stderr, "error: #{message} (see mix help cluster_srv.check)")
    exit({:shutdown, 2})
  end

  defp finish(:ok), do: :ok
  defp finish(:failed), do: exit({:shutdown, 1})
  defp finish(:not_dialed), do: exit({:shutdown, 3})

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

    failing =
      for {{name, type}, why} <- Enum.sort(status.failing),
          do: "#{name} (#{type_name(type)}): #{Reasons.describe_failure(why)}"

    pending =
      for {node, due} <- status.pending_removals,
          do: "#{inspect(node)} in #{max(due - System.monotonic_time(:millisecond), 0)} ms"

    unreachable = for {node, why} <- status.unreachable, do: "#{inspect(node)}: #{inspect(why)}"

    section("Topology #{inspect(status.topology)} on #{inspect(status.node)}", [
      "queries: " <> Enum.map_join(status.queries, ", ", &"#{&1.name} (#{type_name(&1.type)})"),
      "last lookup: #{last}; failures in a row: #{status.failures}",
      "failing (#{length(failing)}): #{listing(failing)}",
      "this node listed: #{inspect(status.self_listed)}#{if status.leaving, do: " (leaving)", else: ""}",
      "listed (#{length(status.listed)}): #{names(status.listed)}",
      "connected (#{length(status.connected)}): #{names(status.connected)}",
      "connecting (#{length(status.connecting)}): #{names(status.connecting)}",
      "unreachable (#{length(unreachable)}): #{listing(unreachable)}",
      "pending removals (#{length(pending)}): #{listing(pending)}"
    ])
  end

  defp describe_result(:ok), do: "ok"
  defp describe_result({:error, reason}), do: "failed, #{Reasons.describe_failure(reason)}"

  defp names(nodes), do: nodes |> Enum.map(&inspect/1) |> listing()

  defp listing([]), do: "-"
  defp listing(items), do: Enum.join(items, ", ")

  # -- The check -------------------------------------------------------------------------------

  # `form` is how the nodes were given: :kubernetes (--service), :dns_cluster (--query alone) or
  # :query (--query with --application-name).
  defp check(%Config{} = config, form) do
    case Resolver.new(config.resolver_options) do
      {:ok, %Resolver{source: source, servers: servers}} ->
        IO.puts(
          "Checking #{describe_form(form)}, asking #{Enum.join(servers, ", ")}#{describe_source(source)}"
        )

        check(config, form, Lookup.new!(config))

      {:error, reason} ->
        section("No DNS server to ask", [Reasons.describe_failure(reason)])
        result("FAILED: no DNS server to ask: give one with --nameserver")
        :failed
    end
  end

  defp check(config, form, lookup) do
    # The records, for what they show (the poll's answer holds node names only), asked beside
    # the poll.
    fill? = config.node_naming == :ip
    srv_names = for %{type: :srv, name: name} <- config.sources, uniq: true, do: name

    records_task =
      Task.async(fn ->
        srv_names
        |> Task.async_stream(&{&1, Resolver.lookup(lookup.resolver, &1, fill_addresses: fill?)},
          timeout: :infinity
        )
        |> Map.new(fn {:ok, found} -> found end)
      end)

    results = poll(lookup)
    records = Task.await(records_task, :infinity)

    Enum.each(results, &print_source(&1, records, config))

    nodes = results |> Enum.flat_map(&source_nodes/1) |> Enum.uniq()
    section("Node names the strategy would connect to (#{length(nodes)})", names_lines(nodes))

    me = self_check(config, form, results, records, nodes)
    hints(config, form, results, records, nodes)
    verdict(results, nodes, me)
  end

  # The strategy's own poll, once: a result per source.
  defp poll(lookup) do
    case Lookup.start(lookup) do
      {:ok, lookup} -> await_poll(lookup)
      {:done, results, _duration, _lookup} -> results
    end
  end

  defp await_poll(lookup) do
    message =
      receive do
        {:cluster_srv_lookup, _ref, _result} = message -> message
        {:cluster_srv_lookup_deadline, _ref} = message -> message
      end

    case Lookup.handle_info(lookup, message) do
      {:done, results, _duration, _lookup} -> results
      :unknown -> await_poll(lookup)
    end
  end

  defp source_nodes({_source, {:ok, %{nodes: nodes}}}), do: nodes
  defp source_nodes({_source, {:error, _reason}}), do: []

  defp names_lines([]), do: ["-"]
  defp names_lines(nodes), do: Enum.map(nodes, &inspect/1)

  defp print_source({source, result}, records, config) do
    lines =
      case {source.type, result} do
        {:srv, {:ok, _found}} -> records_lines(records[source.name])
        _other -> []
      end ++ result_lines(result, source, config)

    section("Query #{label(source)}, nodes named #{naming(source, config)}", lines)
  end

  defp naming(%{type: :srv, basename: basename}, %{node_naming: :hostname}),
    do: "#{basename}@<SRV target>"

  defp naming(%{type: :srv, basename: basename}, %{node_naming: :ip}),
    do: "#{basename}@<SRV target's address>"

  defp naming(%{basename: basename}, _config), do: "#{basename}@<address>"

  defp records_lines({:ok, records}) do
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

    ["records (#{length(records)}):"] ++
      Enum.map(
        table(["priority", "weight", "port", "target", "ttl", "addresses"], rows),
        &("  " <> &1)
      )
  end

  defp records_lines({:error, reason}),
    do: ["records: not shown, asking for them again failed: #{Reasons.describe_failure(reason)}"]

  defp records_lines(nil), do: []

  defp result_lines({:ok, found}, source, config) do
    context = [domain: source.domain, max_nodes: config.max_nodes]
    unresolved = Map.get(found, :unresolved, [])

    # The names themselves are listed once, below, with every query's.
    ["#{length(found.nodes)} node name(s)"] ++
      if(unresolved == [],
        do: [],
        else:
          [
            "✗ unresolved SRV targets (#{length(unresolved)}): DNS lists them, but their address could not be looked up:"
          ] ++
            for(
              {target, why} <- unresolved,
              do: "  #{inspect(target)}: #{describe_unresolved(why)}"
            )
      ) ++
      if(found.rejected == [],
        do: [],
        else:
          ["rejected (#{length(found.rejected)}):"] ++
            for(
              {target, reason} <- found.rejected,
              do: "  #{inspect(target)}: #{Reasons.describe_rejection(reason, context)}"
            )
      )
  end

  defp result_lines({:error, reason}, _source, _config) when reason in [:nxdomain, :no_records],
    do: ["none: #{Reasons.describe_failure(reason)}"]

  defp result_lines({:error, reason}, _source, _config),
    do: ["✗ failed: #{Reasons.describe_failure(reason)}"]

  defp describe_unresolved(:no_records), do: "it has no A or AAAA record"
  defp describe_unresolved(reason), do: "its lookup failed: #{Reasons.describe_failure(reason)}"

  # A query that failed, or whose SRV targets could not all be resolved; a name that does not
  # exist or has no records of the type lists no one, and is no failure.
  defp failed?({_source, {:ok, found}}), do: Map.get(found, :unresolved, []) != []
  defp failed?({_source, {:error, reason}}), do: reason not in [:nxdomain, :no_records]

  defp verdict(results, nodes, me) do
    failed = Enum.filter(results, &failed?/1)

    cond do
      failed != [] ->
        result("FAILED: " <> Enum.map_join(failed, "; ", &describe_failed/1))
        :failed

      nodes == [] and Enum.all?(results, &match?({_, {:error, _}}, &1)) ->
        [{source, {:error, reason}} | _] = results
        result("FAILED: #{label(source)}: #{Reasons.describe_failure(reason)}")
        :failed

      nodes == [] ->
        result(
          "FAILED: the answers hold no valid node name; the strategy would keep every node it knows"
        )

        :failed

      me == :not_dialed ->
        result(
          "NOT DIALED: #{length(nodes)} node name(s), but not this node's, #{inspect(Node.self())}: " <>
            "the other nodes would never connect to it"
        )

        :not_dialed

      me == :unchecked ->
        result(
          "OK: #{length(nodes)} node name(s); this node is not distributed, so whether the " <>
            "others would dial it was not checked"
        )

        :ok

      true ->
        result("OK: #{length(nodes)} node name(s), this node's among them")
        :ok
    end
  end

  defp describe_failed({source, {:ok, %{unresolved: unresolved}}}),
    do: "#{label(source)}: #{Reasons.describe_failure({:unresolved, unresolved})}"

  defp describe_failed({source, {:error, reason}}),
    do: "#{label(source)}: #{Reasons.describe_failure(reason)}"

  defp label(source), do: "#{source.name} (#{type_name(source.type)})"

  defp type_name(type), do: type |> Atom.to_string() |> String.upcase()

  # -- This node --------------------------------------------------------------------------------

  # Prints what this node is to the others, and returns :listed, :not_dialed or :unchecked.
  defp self_check(config, form, results, records, nodes) do
    me = Node.self()

    {verdict, lines} =
      cond do
        me == :nonode@nohost ->
          {:unchecked, not_distributed(config, form)}

        :net_kernel.longnames() != true ->
          {:not_dialed,
           [
             "✗ #{inspect(me)} uses short names; DNS names are fully qualified: use --name (RELEASE_DISTRIBUTION=name)"
           ]}

        me in nodes ->
          {:listed,
           [
             "✓ #{inspect(me)} is distributed with long names, and its name is among the node names"
           ]}

        true ->
          {:not_dialed,
           [
             "✓ #{inspect(me)} is distributed with long names",
             "✗ its name is not among the node names"
           ] ++ dialed_instead(config, results, records, me)}
      end

    section("This node", lines)
    verdict
  end

  defp not_distributed(config, form) do
    basename = if form == :dns_cluster, do: "app", else: config.application_name

    # Queries written BASENAME=NAME have a basename of their own.
    [
      "✗ not distributed, so whether the other nodes would dial it is not checked: run the " <>
        "check on the node itself (bin/app rpc ..., see `mix help cluster_srv.check`), or " <>
        "start with --name #{basename}@<host>"
    ] ++
      if form == :dns_cluster and
           Enum.any?(config.sources, &(&1.basename == config.application_name)) do
        [
          "  in dns_cluster's form the nodes take this node's basename, and this node has none: " <>
            "the names above use #{inspect(config.application_name)}; give one with --query BASENAME=NAME"
        ]
      else
        []
      end
  end

  # Which record or address is this node's, by host name or address, and what the others will
  # dial for it.
  defp dialed_instead(config, results, records, me) do
    host = SelfCheck.host()

    case Enum.find_value(results, &own_name(&1, records, config, me, host)) do
      nil ->
        [
          "  no SRV target or address in the answers is this node, by name or address: the " <>
            "other nodes will never dial it"
        ]

      {dialed, source} ->
        [
          # A string, not an atom: this name may be one the strategy rejected.
          "  the other nodes will dial #{inspect(dialed)} for this node, but it is named #{inspect(me)}:",
          "  set RELEASE_NODE=#{dialed} " <> release_node_hint(source, config)
        ]
    end
  end

  defp own_name({%{type: :srv} = source, _result}, records, config, me, host) do
    with {:ok, records} <- Map.get(records, source.name),
         %Record{} = record <- SelfCheck.own_record(me, records, host) do
      {SelfCheck.dialed(%{config | application_name: source.basename}, record), source}
    else
      _ -> nil
    end
  end

  defp own_name({source, {:ok, %{nodes: nodes}}}, _records, _config, _me, host) do
    Enum.find_value(nodes, fn node ->
      [_basename, address] = node |> Atom.to_string() |> String.split("@", parts: 2)

      case :inet.parse_address(String.to_charlist(address)) do
        {:ok, ip} -> if ip in host.addresses, do: {Atom.to_string(node), source}
        {:error, _} -> nil
      end
    end)
  end

  defp own_name(_failed, _records, _config, _me, _host), do: nil

  defp release_node_hint(%{type: :srv, basename: basename}, %{node_naming: :hostname}) do
    "(in rel/env.sh.eex: #{basename}@$(hostname -f), or #{basename}@${POD_IP} with " <>
      "node_naming: :ip)"
  end

  defp release_node_hint(%{basename: basename}, _config) do
    "(the nodes are named after their address, as DNS lists it: in rel/env.sh.eex, " <>
      "#{basename}@${POD_IP} on Kubernetes, #{basename}@${FLY_PRIVATE_IP} on fly.io)"
  end

  # -- Hints -------------------------------------------------------------------------------------

  defp hints(config, form, results, records, nodes) do
    srv_records = for {:ok, found} <- Map.values(records), record <- found, do: record

    rejected =
      for {source, {:ok, found}} <- results,
          {target, why} <- found.rejected,
          do: {source, target, why}

    # A failure is hinted at when it is one, or when no query named anyone.
    error_hints =
      for {source, {:error, reason}} = entry <- results,
          failed?(entry) or nodes == [],
          hint = hint_for_error(form, source, reason),
          uniq: true,
          do: hint

    hints =
      [
        dashed_ip_hint(config, srv_records),
        outside_hint(rejected),
        service_itself_hint(rejected)
      ]
      |> Enum.reject(&is_nil/1)
      |> Kernel.++(List.flatten(error_hints))

    if hints != [], do: section("Hints", hints)
  end

  defp dashed_ip_hint(config, records) do
    dashed = Enum.filter(records, &SelfCheck.dashed_ip?(&1.target))

    if dashed != [] and config.node_naming == :hostname do
      "the SRV targets are dashed IPs (#{inspect(hd(dashed).target)}): the pods have no host name in " <>
        "DNS, so no node is named after them. Either enable CoreDNS's `endpoint_pod_names` option " <>
        "(in the kubernetes plugin of its Corefile) and give the pods a hostname and a subdomain " <>
        "matching the service, or name the nodes after their IP (RELEASE_NODE=app@${POD_IP}) and " <>
        "use `node_naming: :ip`."
    end
  end

  defp outside_hint(rejected) do
    case for {source, target, :outside_domain} <- rejected, do: {source, target} do
      [] ->
        nil

      [{source, target} | _] = outside ->
        "#{length(outside)} target(s) lie outside #{source.domain} (#{inspect(target)}): the strategy " <>
          "ignores them. Is this the right service and namespace, and is the DNS answer the cluster's?"
    end
  end

  defp service_itself_hint(rejected) do
    if Enum.any?(rejected, &match?({_, _, :service_itself}, &1)) do
      "the SRV target is the service's own name: the service is not headless, so DNS lists the " <>
        "service rather than its pods. Set `clusterIP: None` on the service."
    end
  end

  defp hint_for_error(form, source, :nxdomain) when form in [:dns_cluster, :query] do
    "#{source.name} does not exist (NXDOMAIN): is --query the name the nodes are listed under " <>
      "(fly.io: <app>.internal; Consul: <service>.service.consul), and does the server asked know it?"
  end

  defp hint_for_error(:kubernetes, source, :nxdomain) do
    causes =
      if String.starts_with?(source.name, "_") do
        [
          "the service has no port with that name: the _<port>._<proto> form needs a named port " <>
            "(ports[].name) on the service, and --protocol must match it (tcp by default)"
        ]
      else
        []
      end ++
        [
          "a wrong service or namespace: the name asked is #{source.name}",
          "no ready pods: DNS lists a pod only once it is ready, unless the service sets " <>
            "`publishNotReadyAddresses: true`, which clustering before readiness needs",
          "a service without ports: SRV records exist only for a service's ports",
          "a cluster domain other than " <>
            "#{inspect(source.name |> String.split(".svc.") |> List.last())}: set " <>
            "--cluster-domain (CLUSTER_DOMAIN)"
        ]

    ["the name does not exist (NXDOMAIN). Likely causes:" | Enum.map(causes, &("  - " <> &1))]
  end

  defp hint_for_error(:dns_cluster, %{type: :srv} = source, :no_records) do
    "#{source.name} exists but holds no SRV records: dns_cluster's form asks A and AAAA " <>
      "records (--resource-types a,aaaa)"
  end

  defp hint_for_error(_form, %{type: :srv}, :no_records),
    do: "the name exists but holds no SRV records: is it a headless service with ports?"

  defp hint_for_error(_form, source, :no_records),
    do: "#{source.name} exists but holds no #{type_name(source.type)} records"

  defp hint_for_error(_form, _source, reason) when reason in [:timeout, :servfail, :refused] do
    "the DNS server did not answer usefully: check --nameserver (or the pod's resolv.conf); " <>
      "CoreDNS answers SERVFAIL until it has synced with the API server"
  end

  defp hint_for_error(_form, _source, _reason), do: nil

  # -- Output ------------------------------------------------------------------------------------

  defp describe_form(:dns_cluster), do: "dns_cluster's form (--query without --application-name)"
  defp describe_form(:query), do: "--query with --application-name"
  defp describe_form(:kubernetes), do: "the headless service"

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
