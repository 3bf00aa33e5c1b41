defmodule ClusterSRV.Config do
  @moduledoc false
  # Validation of options, with errors that name the key, the value given and what is expected.
  #
  # A bad option is a programmer's mistake, found at start: it raises `ArgumentError`.
  #
  # ## Example
  #
  #     iex> ClusterSRV.Config.resolver_options!(nameservers: ["127.0.0.1:5353"], timeout: 500)
  #     [nameservers: ["127.0.0.1:5353"], timeout: 500, attempts: 2]
  #
  #     iex> ClusterSRV.Config.resolver_options!(timeout: -1)
  #     ** (ArgumentError) invalid value for :timeout: expected a positive integer of milliseconds (at most 600000), got: -1. Example: timeout: 2_000

  @enforce_keys [:application_name, :query, :domain, :sources]
  defstruct [
    :application_name,
    :query,
    :domain,
    :sources,
    :resolver,
    log: :info,
    polling_interval: 5_000,
    polling_jitter: 0.1,
    resolver_options: [],
    node_naming: :hostname,
    max_nodes: 1_000,
    connect_timeout: 30_000,
    prune: true,
    prune_grace: 0
  ]

  @typedoc """
  A validated strategy config. `:sources` are what each poll asks: a name, the record type, the
  base name of the nodes it lists, and the domain SRV targets must lie under (`nil` for a
  `:query`). `:query` and `:domain` are the first source's. `:resolver` is the user's lookup
  function or `nil` for the native resolver; `:log` the level of the connect and disconnect
  lines (`false` for none).
  """
  @type source :: %{
          name: String.t(),
          type: :srv | :a | :aaaa,
          basename: String.t(),
          domain: String.t() | nil
        }

  @type t :: %__MODULE__{
          application_name: String.t(),
          query: String.t(),
          domain: String.t() | nil,
          sources: [source()],
          log: Logger.level() | false,
          resolver: (charlist() -> term()) | nil,
          polling_interval: pos_integer(),
          polling_jitter: float(),
          resolver_options: keyword(),
          node_naming: :hostname | :ip,
          max_nodes: pos_integer(),
          connect_timeout: pos_integer(),
          prune: boolean(),
          prune_grace: non_neg_integer()
        }

  @strategy_keys [
    :service,
    :namespace,
    :application_name,
    :polling_interval,
    :polling_jitter,
    :resolver,
    :cluster_domain,
    :port_name,
    :protocol,
    :query,
    :nameservers,
    :timeout,
    :attempts,
    :node_naming,
    :max_nodes,
    :connect_timeout,
    :prune,
    :prune_grace,
    :dns_rr_types,
    :resource_types,
    :interval,
    :log
  ]

  @doc false
  # Every key the strategy's config takes, for the docs' test.
  def strategy_keys, do: @strategy_keys

  @default_timeout 2_000
  @default_attempts 2
  @max_timeout 600_000
  @max_attempts 10

  @resolver_keys [:nameservers, :timeout, :attempts]

  @doc """
  Validates a strategy's `config` keyword list, as given under `config :libcluster, topologies`.

  Returns the validated config and the unknown keys (which the strategy logs, since they are
  likely typos). A missing or bad key raises `ArgumentError` naming the key, the value and what
  is expected.

      iex> {config, []} = ClusterSRV.Config.strategy!(
      ...>   service: "myapp-headless", namespace: "default", application_name: "myapp",
      ...>   cluster_domain: "cluster.local.")
      iex> {config.query, config.domain}
      {"myapp-headless.default.svc.cluster.local.", "myapp-headless.default.svc.cluster.local"}

      iex> {config, []} = ClusterSRV.Config.strategy!(
      ...>   service: "myapp-headless", namespace: "default", application_name: "myapp",
      ...>   port_name: "epmd", cluster_domain: "cluster.local.")
      iex> config.query
      "_epmd._tcp.myapp-headless.default.svc.cluster.local."

      iex> ClusterSRV.Config.strategy!(service: "myapp-headless", namespace: "default")
      ** (ArgumentError) missing required key :application_name: expected the nodes' base name, the part before "@" (a string such as "myapp"). Example: application_name: "myapp"
  """
  @spec strategy!(keyword()) :: {t(), [atom()]}
  def strategy!(config) do
    unless is_list(config) and Keyword.keyword?(config) do
      raise ArgumentError,
            "expected the strategy's config as a keyword list, got: #{inspect(config)}. " <>
              ~s|Example: config: [service: "myapp-headless", namespace: "default", application_name: "myapp"]|
    end

    {queries, domain, service_name} = query!(config)
    resolver = optional(config, :resolver, nil, &resolver!/1)

    # dns_cluster's form: a query and no application_name. Every default is dns_cluster's: its
    # nodes are named after this node's base name and their addresses, it asks A and AAAA
    # records, logs no line per connect, gives a connect 10 s, and never disconnects a node
    # DNS stops listing.
    dns_cluster? = dns_cluster_form?(config)

    application_name =
      if dns_cluster?,
        do: own_basename(resolver),
        else: required!(config, :application_name, &application_name!/1)

    types = rr_types!(config, if(dns_cluster?, do: [:a, :aaaa], else: [:srv]))

    sources =
      for {basename, name} <- queries, type <- types do
        %{
          # A and AAAA records of a service are at its own name, not at a named port's.
          name: if(type != :srv and service_name, do: service_name, else: name),
          type: type,
          basename: basename || application_name,
          domain: if(type == :srv, do: domain)
        }
      end
      |> Enum.uniq()

    resolver_options =
      config
      |> Keyword.take([:nameservers, :timeout, :attempts])
      |> resolver_options!()

    [first | _] = sources

    validated = %__MODULE__{
      application_name: application_name,
      query: first.name,
      domain: first.domain,
      sources: sources,
      resolver: resolver,
      polling_interval: polling_interval!(config),
      polling_jitter: optional(config, :polling_jitter, 0.1, &polling_jitter!/1),
      log: optional(config, :log, if(dns_cluster?, do: false, else: :info), &log!/1),
      resolver_options: resolver_options,
      node_naming:
        optional(
          config,
          :node_naming,
          if(dns_cluster?, do: :ip, else: :hostname),
          &node_naming!/1
        ),
      max_nodes: optional(config, :max_nodes, 1_000, &max_nodes!/1),
      connect_timeout:
        optional(
          config,
          :connect_timeout,
          if(dns_cluster?, do: 10_000, else: 30_000),
          &connect_timeout!/1
        ),
      prune: optional(config, :prune, not dns_cluster?, &prune!/1),
      prune_grace: optional(config, :prune_grace, 0, &prune_grace!/1)
    }

    {validated, config |> Keyword.keys() |> Enum.uniq() |> Kernel.--(@strategy_keys)}
  end

  # The Kubernetes forms ask `[_port._proto.]service.namespace.svc.domain`; `:query` replaces
  # them, with one name, `{basename, name}`, or a list of either. Returns the names (each with
  # its own base name, or nil), the domain pod targets must lie under, and the service's own
  # name, where its A and AAAA records are (nil for a query).
  defp query!(config) do
    case Keyword.fetch(config, :query) do
      {:ok, query} ->
        for key <- [:service, :namespace, :port_name, :protocol, :cluster_domain],
            Keyword.has_key?(config, key) do
          raise ArgumentError,
                "#{inspect(key)} cannot be combined with :query: :query is the full name to ask " <>
                  "and replaces :service, :namespace, :port_name, :protocol and :cluster_domain, " <>
                  "got: query: #{inspect(query)}, #{key}: #{inspect(config[key])}"
        end

        {queries!(query), nil, nil}

      :error ->
        domain = optional(config, :cluster_domain, cluster_domain_env!(), &cluster_domain!/1)
        service_name = service_name(config, domain)

        case Keyword.fetch(config, :port_name) do
          {:ok, port_name} ->
            # Each is asked as `_<label>`, one label of at most 63 octets.
            port_name = label!(:port_name, port_name, "the name of the service's port", 62)

            protocol =
              optional(config, :protocol, "tcp", &label!(:protocol, &1, "a protocol", 62))

            name = joined_name!(config, "_#{port_name}._#{protocol}.#{service_name}")
            {[{nil, name}], pods_domain(service_name), service_name}

          :error ->
            if Keyword.has_key?(config, :protocol) do
              raise ArgumentError,
                    ":protocol is the protocol of :port_name, and means nothing without it, " <>
                      "got: protocol: #{inspect(config[:protocol])}. Example: " <>
                      ~s|port_name: "discovery", protocol: "tcp"|
            end

            {[{nil, service_name}], pods_domain(service_name), service_name}
        end
    end
  end

  defp service_name(config, domain) do
    service = required!(config, :service, &label!(:service, &1, "the headless service's name"))
    namespace = required!(config, :namespace, &label!(:namespace, &1, "the service's namespace"))
    joined_name!(config, "#{service}.#{namespace}.svc.#{domain}")
  end

  # The name the Kubernetes forms join from several keys must still be a DNS name.
  defp joined_name!(config, name) do
    if dns_name?(name) do
      name
    else
      given =
        config
        |> Keyword.take([:service, :namespace, :port_name, :protocol, :cluster_domain])
        |> Enum.map_join(", ", fn {key, value} -> "#{key}: #{inspect(value)}" end)

      raise ArgumentError,
            "the name to ask, #{inspect(name)}, is #{byte_size(String.trim_trailing(name, "."))} " <>
              "characters long; a DNS name holds at most 253. It is joined from #{given}" <>
              if(Keyword.has_key?(config, :cluster_domain),
                do: "",
                else: " and the cluster domain #{inspect(cluster_domain_env!())}"
              ) <> ": shorten one of them"
    end
  end

  # A name the native resolver can ask: labels of letters, digits, "-" and "_", each 1 to 63
  # octets and not starting with "-", 253 octets in all; one trailing dot makes it absolute.
  @doc false
  def dns_name?(name) when is_binary(name) do
    bare =
      if String.ends_with?(name, "."), do: binary_part(name, 0, byte_size(name) - 1), else: name

    byte_size(bare) in 1..253 and
      bare |> String.split(".") |> Enum.all?(&(&1 =~ ~r/\A[A-Za-z0-9_][A-Za-z0-9_-]{0,62}\z/))
  end

  def dns_name?(_other), do: false

  defp pods_domain(service_name),
    do: service_name |> String.trim_trailing(".") |> String.downcase(:ascii)

  defp queries!(queries) when is_list(queries) and queries != [],
    do: Enum.map(queries, &one_query!(&1, queries))

  defp queries!(query), do: [one_query!(query, nil)]

  defp one_query!({basename, name}, _all) when is_binary(basename),
    do: {application_name!(basename), query_name!(name)}

  defp one_query!(name, _all) when is_binary(name), do: {nil, query_name!(name)}

  defp one_query!(other, all) do
    in_list = if all, do: " in #{inspect(all)}", else: ""

    raise ArgumentError,
          "invalid value for :query: #{inspect(other)}#{in_list} is not a query; expected " <>
            ":query to be a string (a name to ask), {basename, name}, or a list of either. Example: " <>
            ~s|query: ["myapp.internal", {"worker", "worker.internal"}]|
  end

  # This node's own base name, the part of its name before "@", as dns_cluster takes it (from
  # its resolver module's basename/1, when it has one).
  defp own_basename(module) when is_atom(module) and module != nil do
    if function_exported?(module, :basename, 1),
      do: module.basename(Node.self()),
      else: own_basename(nil)
  end

  defp own_basename(_resolver) do
    [basename | _] = Node.self() |> Atom.to_string() |> String.split("@")
    basename
  end

  @rr_types [:a, :aaaa, :srv]

  defp rr_types!(config, default) do
    case {Keyword.fetch(config, :dns_rr_types), Keyword.fetch(config, :resource_types)} do
      {{:ok, _}, {:ok, _}} ->
        raise ArgumentError,
              ":dns_rr_types and :resource_types are the same option (the second is " <>
                "dns_cluster's name for it): give one, got: " <>
                "dns_rr_types: #{inspect(config[:dns_rr_types])}, " <>
                "resource_types: #{inspect(config[:resource_types])}"

      {{:ok, types}, :error} ->
        rr_types_value!(:dns_rr_types, types)

      {:error, {:ok, types}} ->
        rr_types_value!(:resource_types, types)

      {:error, :error} ->
        default
    end
  end

  defp rr_types_value!(key, types) do
    if is_list(types) and types != [] and Enum.all?(types, &(&1 in @rr_types)) do
      Enum.uniq(types)
    else
      invalid!(
        key,
        types,
        ":#{key} to be a subset of #{inspect(@rr_types)}, not empty (the record types to ask)",
        "#{key}: [:a, :aaaa]"
      )
    end
  end

  defp polling_interval!(config) do
    case {Keyword.fetch(config, :polling_interval), Keyword.fetch(config, :interval)} do
      {{:ok, _}, {:ok, _}} ->
        raise ArgumentError,
              ":interval is dns_cluster's name for :polling_interval: give one, got: " <>
                "polling_interval: #{inspect(config[:polling_interval])}, " <>
                "interval: #{inspect(config[:interval])}"

      {{:ok, ms}, :error} ->
        polling_interval!(:polling_interval, ms)

      {:error, {:ok, ms}} ->
        polling_interval!(:interval, ms)

      {:error, :error} ->
        5_000
    end
  end

  @log_levels [:emergency, :alert, :critical, :error, :warning, :notice, :info, :debug]

  defp log!(level) when level == false or level in @log_levels, do: level

  defp log!(level) do
    invalid!(
      :log,
      level,
      "false (no line for each connect and disconnect) or a Logger level, such as :info",
      "log: :info"
    )
  end

  # libcluster reads CLUSTER_DOMAIN when :cluster_domain is not given; a bad value would only
  # show as a lookup failing at every poll, so it is checked like the key.
  defp cluster_domain_env! do
    domain = System.get_env("CLUSTER_DOMAIN", "cluster.local.")

    if dns_name?(domain) do
      domain
    else
      raise ArgumentError,
            "invalid CLUSTER_DOMAIN environment variable: expected the cluster's DNS domain, " <>
              "got: #{inspect(domain)}. Example: CLUSTER_DOMAIN=cluster.local."
    end
  end

  defp required!(config, key, validate) do
    case Keyword.fetch(config, key) do
      {:ok, value} -> validate.(value)
      :error -> missing!(key)
    end
  end

  defp optional(config, key, default, validate) do
    case Keyword.fetch(config, key) do
      {:ok, value} -> validate.(value)
      :error -> default
    end
  end

  defp missing!(:application_name) do
    raise ArgumentError,
          ~s|missing required key :application_name: expected the nodes' base name, the part before "@" | <>
            ~s|(a string such as "myapp"). Example: application_name: "myapp"|
  end

  defp missing!(key) when key in [:service, :namespace] do
    raise ArgumentError,
          "missing required key #{inspect(key)}: expected the headless service's " <>
            "#{if key == :service, do: "name", else: "namespace"} as a string, or a full SRV name " <>
            ~s|in :query. Example: service: "myapp-headless", namespace: "default"|
  end

  defp application_name!(name) when is_binary(name) and byte_size(name) in 1..200 do
    if name =~ ~r/\A[A-Za-z0-9_.-]+\z/ do
      name
    else
      invalid!(
        :application_name,
        name,
        application_name_expectation(),
        ~s|application_name: "myapp"|
      )
    end
  end

  defp application_name!(name),
    do:
      invalid!(
        :application_name,
        name,
        application_name_expectation(),
        ~s|application_name: "myapp"|
      )

  defp application_name_expectation,
    do: ~s|a node base name (the part before "@") of letters, digits, "_", "-" and "."|

  defp label!(key, value, what, max \\ 63)

  defp label!(key, value, what, max) when is_binary(value) do
    if byte_size(value) <= max and value =~ ~r/\A[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\z/ do
      value
    else
      label_error!(key, value, what, max)
    end
  end

  defp label!(key, value, what, max), do: label_error!(key, value, what, max)

  defp label_error!(key, value, what, max) do
    example =
      case key do
        :service -> ~s|service: "myapp-headless"|
        :namespace -> ~s|namespace: "default"|
        :port_name -> ~s|port_name: "epmd"|
        :protocol -> ~s|protocol: "tcp"|
      end

    invalid!(
      key,
      value,
      "#{what}: one DNS label of at most #{max} characters (letters, digits and inner hyphens)",
      example
    )
  end

  defp cluster_domain!(domain) when is_binary(domain) do
    if dns_name?(domain) do
      domain
    else
      cluster_domain_error!(domain)
    end
  end

  defp cluster_domain!(domain), do: cluster_domain_error!(domain)

  defp cluster_domain_error!(domain) do
    invalid!(
      :cluster_domain,
      domain,
      "the cluster's DNS domain, with or without the trailing dot",
      ~s|cluster_domain: "cluster.local."|
    )
  end

  defp query_name!(query) do
    if dns_name?(query), do: query, else: query_error!(query)
  end

  defp query_error!(query) do
    invalid!(
      :query,
      query,
      "a DNS name to ask (labels of letters, digits, \"-\" and \"_\" that do not start " <>
        "with \"-\", at most 63 characters each and 253 in all), {basename, name}, or a " <>
        "list of either",
      ~s|query: "_erlang._tcp.myapp.service.consul."|
    )
  end

  defp resolver!(fun) when is_function(fun, 1), do: fun

  defp resolver!(module) when is_atom(module) and module not in [nil, true, false] do
    if Code.ensure_loaded?(module) and function_exported?(module, :lookup, 2) do
      module
    else
      resolver_error!(module)
    end
  end

  defp resolver!(other), do: resolver_error!(other)

  defp resolver_error!(value) do
    invalid!(
      :resolver,
      value,
      "a function of one argument that takes the name to ask as a charlist and returns what " <>
        ":inet_res.getbyname/2 returns, or a module with dns_cluster's resolver callbacks " <>
        "(lookup/2, and optionally basename/1, connect_node/1 and list_nodes/0)",
      "resolver: &:inet_res.getbyname(&1, :srv)"
    )
  end

  @doc false
  # dns_cluster's form: a query and no application_name.
  def dns_cluster_form?(config),
    do: Keyword.has_key?(config, :query) and not Keyword.has_key?(config, :application_name)

  defp polling_interval!(_key, ms) when is_integer(ms) and ms > 0, do: ms

  defp polling_interval!(key, ms),
    do: invalid!(key, ms, "a positive integer of milliseconds", "#{key}: 5_000")

  defp polling_jitter!(jitter) when is_number(jitter) and jitter >= 0 and jitter <= 0.5,
    do: jitter / 1

  defp polling_jitter!(jitter) do
    invalid!(
      :polling_jitter,
      jitter,
      "a number from 0 to 0.5, the share of polling_interval by which each poll is moved " <>
        "earlier or later at random (0 turns it off)",
      "polling_jitter: 0.1"
    )
  end

  defp node_naming!(naming) when naming in [:hostname, :ip], do: naming
  defp node_naming!("hostname"), do: :hostname
  defp node_naming!("ip"), do: :ip

  defp node_naming!(naming) do
    invalid!(
      :node_naming,
      naming,
      ":hostname (nodes named app@<SRV target>) or :ip (nodes named app@<pod IP>)",
      "node_naming: :hostname"
    )
  end

  defp connect_timeout!(ms) when is_integer(ms) and ms > 0, do: ms

  defp connect_timeout!(ms) do
    invalid!(
      :connect_timeout,
      ms,
      "a positive integer of milliseconds (the longest a connect or disconnect may take)",
      "connect_timeout: 30_000"
    )
  end

  defp prune!(prune) when is_boolean(prune), do: prune

  defp prune!(prune) do
    invalid!(
      :prune,
      prune,
      "true (disconnect nodes DNS no longer lists) or false (never disconnect because of DNS)",
      "prune: true"
    )
  end

  defp prune_grace!(ms) when is_integer(ms) and ms >= 0, do: ms

  defp prune_grace!(ms) do
    invalid!(
      :prune_grace,
      ms,
      "a non-negative integer of milliseconds (how long a node may be missing from DNS " <>
        "before it is disconnected)",
      "prune_grace: 30_000"
    )
  end

  defp max_nodes!(max) when is_integer(max) and max > 0 and max <= 100_000, do: max

  defp max_nodes!(max) do
    invalid!(
      :max_nodes,
      max,
      "a positive integer, at most 100000 (the most node names taken from one answer)",
      "max_nodes: 1_000"
    )
  end

  @doc """
  Validates the options of `ClusterSRV.Resolver.new/1` and fills in the defaults.

  Unknown keys raise, since a resolver has no other options.

      iex> ClusterSRV.Config.resolver_options!([])
      [nameservers: [], timeout: 2000, attempts: 2]

      iex> ClusterSRV.Config.resolver_options!(attempts: 0)
      ** (ArgumentError) invalid value for :attempts: expected an integer from 1 to 10 (the total number of tries), got: 0. Example: attempts: 2
  """
  @spec resolver_options!(keyword()) :: keyword()
  def resolver_options!(opts) when is_list(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "expected resolver options as a keyword list, got: #{inspect(opts)}"
    end

    case Keyword.keys(opts) -- @resolver_keys do
      [] ->
        :ok

      unknown ->
        raise ArgumentError,
              "unknown resolver option(s) #{inspect(unknown)}; the options are #{inspect(@resolver_keys)}"
    end

    [
      nameservers: nameservers!(Keyword.get(opts, :nameservers, [])),
      timeout: timeout!(Keyword.get(opts, :timeout, @default_timeout)),
      attempts: attempts!(Keyword.get(opts, :attempts, @default_attempts))
    ]
  end

  def resolver_options!(opts) do
    raise ArgumentError, "expected resolver options as a keyword list, got: #{inspect(opts)}"
  end

  @doc """
  Checks the shape of `:nameservers`: a list of `"ip"`, `"ip:port"`, `"[ipv6]:port"`,
  `{ip_string, port}` or `{ip_tuple, port}`. The addresses themselves are parsed natively when
  the resolver is built.

      iex> ClusterSRV.Config.nameservers!(["10.0.0.10", {{127, 0, 0, 1}, 5353}])
      ["10.0.0.10", {{127, 0, 0, 1}, 5353}]

      iex> ClusterSRV.Config.nameservers!("10.0.0.10")
      ** (ArgumentError) invalid value for :nameservers: expected a list of nameservers such as "10.0.0.10", "127.0.0.1:5353", "[fd00::a]:53", {"10.0.0.10", 53} or {{10, 0, 0, 10}, 53}, got: "10.0.0.10". Example: nameservers: ["127.0.0.1:5353"]
  """
  @spec nameservers!(term()) :: list()
  def nameservers!(nameservers) when is_list(nameservers) do
    Enum.each(nameservers, &nameserver_term!(&1, nameservers))
    nameservers
  end

  def nameservers!(other), do: invalid!(:nameservers, other, nameserver_expectation())

  @doc false
  # The form the NIF decodes: a binary, or {ip_binary, port}.
  def nameserver_term!(nameserver, all \\ nil)
  def nameserver_term!(text, _all) when is_binary(text), do: text

  # The native side takes a port as a 16-bit number: anything else is refused here, by name.
  def nameserver_term!({_ip, port} = nameserver, all)
      when is_integer(port) and port not in 1..65_535,
      do: invalid_nameserver!(nameserver, all, "port #{port} is not in 1..65535")

  def nameserver_term!({ip, port}, _all) when is_binary(ip) and is_integer(port), do: {ip, port}

  def nameserver_term!({ip, port} = nameserver, all) when is_tuple(ip) and is_integer(port) do
    case :inet.ntoa(ip) do
      {:error, _} -> invalid_nameserver!(nameserver, all, "#{inspect(ip)} is not an IP address")
      text -> {List.to_string(text), port}
    end
  end

  def nameserver_term!(nameserver, all) do
    invalid_nameserver!(nameserver, all, "unsupported form")
  end

  @doc false
  def invalid_nameserver!(nameserver, all, why) do
    in_list = if all, do: " in #{inspect(all)}", else: ""

    raise ArgumentError,
          "invalid value for :nameservers: #{inspect(nameserver)}#{in_list} is not a nameserver " <>
            "(#{why}); expected #{nameserver_expectation()}. Example: nameservers: [\"127.0.0.1:5353\"]"
  end

  defp nameserver_expectation do
    ~s|a list of nameservers such as "10.0.0.10", "127.0.0.1:5353", "[fd00::a]:53", | <>
      ~s|{"10.0.0.10", 53} or {{10, 0, 0, 10}, 53}|
  end

  @doc false
  def timeout!(timeout) when is_integer(timeout) and timeout > 0 and timeout <= @max_timeout,
    do: timeout

  def timeout!(timeout) do
    invalid!(
      :timeout,
      timeout,
      "a positive integer of milliseconds (at most #{@max_timeout})",
      "timeout: 2_000"
    )
  end

  @doc false
  def attempts!(attempts)
      when is_integer(attempts) and attempts >= 1 and attempts <= @max_attempts,
      do: attempts

  def attempts!(attempts) do
    invalid!(
      :attempts,
      attempts,
      "an integer from 1 to #{@max_attempts} (the total number of tries)",
      "attempts: 2"
    )
  end

  @doc false
  @spec invalid!(atom(), term(), String.t(), String.t() | nil) :: no_return()
  def invalid!(key, value, expected, example \\ nil)

  def invalid!(:nameservers, value, expected, nil) do
    invalid!(:nameservers, value, expected, ~s|nameservers: ["127.0.0.1:5353"]|)
  end

  def invalid!(key, value, expected, example) do
    example = if example, do: ". Example: #{example}", else: ""

    raise ArgumentError,
          "invalid value for #{inspect(key)}: expected #{expected}, got: #{inspect(value)}#{example}"
  end
end
