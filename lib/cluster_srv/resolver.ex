defmodule ClusterSRV.Resolver do
  @moduledoc """
  Native DNS SRV lookups.

  The work runs in Rust (hickory) on one shared tokio runtime with one named worker thread, so
  a lookup never occupies a BEAM scheduler while it waits for the network.

      {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:5353"], timeout: 2_000, attempts: 2)

      {:ok, records} = ClusterSRV.Resolver.lookup(resolver, "myapp-headless.default.svc.cluster.local.")
      # [%ClusterSRV.Record{priority: 0, weight: 33, port: 4370, ttl: 5,
      #    target: "myapp-0.myapp-headless.default.svc.cluster.local", addresses: [{127, 0, 0, 10}]}, ...]

      {:error, :nxdomain} = ClusterSRV.Resolver.lookup(resolver, "missing.default.svc.cluster.local.")

  ## Options

    * `:nameservers` - the servers to ask, each as `"ip"` (port 53), `"ip:port"`,
      `"[ipv6]:port"`, `{ip_string, port}` or `{ip_tuple, port}`. A link-local IPv6 server
      (`fe80::/10`) is reached through one interface, so it must be written with its zone:
      `"fe80::1%eth0"`, `"[fe80::1%eth0]:53"` or `{"fe80::1%eth0", 53}` (an interface index
      such as `%2` works too). When left out, the VM's own resolver settings are used, as
      `:inet_res` uses them, else `/etc/resolv.conf` (see `new/1`).
    * `:timeout` - the time allowed for each try, in milliseconds. Defaults to `2_000`.
    * `:attempts` - the total number of tries. Defaults to `2`. A server that never answers gives
      `{:error, :timeout}` after about `timeout * attempts`.

  A name with a trailing dot is absolute and never goes through the search list.

  ## Results

  `{:ok, records}` holds every SRV record of the answer (CoreDNS sends one per port) as
  `ClusterSRV.Record` structs, sorted by priority, then target. Answers too large for UDP are
  fetched again over TCP. No answer is cached: every lookup asks the server.

  DNS conditions are values, never raises:

    * `:nxdomain` - the name does not exist.
    * `:no_records` - the name exists but has no SRV records.
    * `:timeout` - no server answered in time.
    * `:servfail` - the server failed (CoreDNS answers this until it has synced).
    * `:refused` - the server refused the query.
    * `:answer_too_large` - the answer does not fit in one DNS message (65,535 bytes): the
      server set TC on its TCP answer, with part of the records or none. About 900 pods of a
      StatefulSet give such an answer; see `ClusterSRV.Reasons.describe_failure/1`.
    * `{:invalid_name, name}` - the name is not a valid DNS name.
    * `{:io, message}` - anything else: a network error, a malformed answer, another response code.
    * `{:panic, message}` - a bug in the native code, caught before it reached the VM.
  """

  alias ClusterSRV.{Config, Native, Record}

  @enforce_keys [:ref, :nameservers, :timeout, :attempts]

  # The fields of :file's file_info record, in order: resolv.conf is stat'ed with :file and
  # `raw` rather than File.stat/2, so that a poll neither waits for the file server nor has to
  # load File.Stat first.
  @file_info :file_info
             |> Elixir.Record.extract(from_lib: "kernel/include/file.hrl")
             |> Keyword.keys()
  # Their positions in the record tuple (the tag is at 0), found when compiling.
  @resolv_conf_fields for field <- [:mtime, :size, :inode],
                          do: Enum.find_index(@file_info, &(&1 == field)) + 1

  defstruct [
    :ref,
    :nameservers,
    :timeout,
    :attempts,
    source: :nameservers,
    servers: [],
    system: nil
  ]

  @typedoc """
  A configured resolver. Share it freely: lookups do not change it, and it keeps nothing
  between them. `:source` says where its servers came from (`:nameservers`, `:vm` or
  `:resolv_conf`) and `:servers` lists them as `"ip:port"`.
  """
  @type t :: %__MODULE__{
          ref: reference(),
          nameservers: list(),
          timeout: pos_integer(),
          attempts: pos_integer(),
          source: :nameservers | :vm | :resolv_conf,
          servers: [String.t()]
        }

  @type reason ::
          :nxdomain
          | :no_records
          | :timeout
          | :servfail
          | :refused
          | :answer_too_large
          | {:invalid_name, String.t()}
          | {:io, String.t()}
          | {:panic, String.t()}

  # The most targets node_names/2 validates on the caller's own scheduler (see there).
  @scheduler_targets 50

  # Margin over the native deadline before the caller stops waiting. The native side always
  # replies within timeout * attempts (plus 100 ms for a TCP retry); this only guards a bug.
  @reply_margin 1_000

  @doc """
  Builds a resolver. No query is sent until the first lookup.

  The servers it asks are, in this order of precedence:

    1. `:nameservers`, when given (with no search list);
    2. else the servers the VM itself resolves with, as `:inet_res` does (and so libcluster's
       `Kubernetes.DNSSRV`): `:inet_db`'s `nameservers` and `alt_nameservers`, with its
       `search` list (or `domain`). These come from `/etc/resolv.conf` unless `ERL_INETRC`
       or the application changed them. As with `:inet_res`, a relative name with a dot is
       tried as it is before the search list;
    3. else `/etc/resolv.conf`, with its search list and `ndots`.

  The VM's settings drop a link-local server's zone, and hickory drops it from resolv.conf: the
  zone then comes from resolv.conf's own `nameserver fe80::1%eth0` line, and a link-local
  server whose zone is not known there is left out.

  Raises `ArgumentError` for a malformed option, naming the value (a link-local server written
  without its zone included). Returns `{:error, reason}` only when no server can be found (when
  `:nameservers` is left out), for example when the only one is link-local with no zone.

      iex> {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:5353"])
      iex> {resolver.source, resolver.servers}
      {:nameservers, ["127.0.0.1:5353"]}
  """
  @spec new(keyword()) :: {:ok, t()} | {:error, reason()}
  def new(opts \\ []) do
    opts = Config.resolver_options!(opts)
    nameservers = opts[:nameservers]
    terms = Enum.map(nameservers, &Config.nameserver_term!(&1, nameservers))

    system = if terms == [], do: system_settings()

    {source, terms, search} =
      case {terms, system} do
        {[], {{[], _search}, _resolv_conf}} -> {:resolv_conf, [], []}
        {[], {{vm_servers, search}, _resolv_conf}} -> {:vm, vm_servers, search}
        {terms, nil} -> {:nameservers, terms, []}
      end

    # :inet_res tries a name with an embedded dot as it is first: ndots 1.
    result =
      Native.resolver_new(
        terms,
        source == :vm,
        search,
        1,
        opts[:timeout],
        opts[:attempts],
        deadline(opts)
      )

    case result do
      {:ok, ref} ->
        %{servers: servers} = Native.resolver_plan(ref)
        fields = [ref: ref, source: source, servers: servers, system: system]
        {:ok, struct!(__MODULE__, fields ++ opts)}

      {:error, {:invalid_nameserver, index, why}} when source == :nameservers ->
        Config.invalid_nameserver!(Enum.at(nameservers, index), nameservers, why)

      {:error, reason} ->
        {:error, reason}
    end
  end

  @doc false
  # The resolver to use now: `resolver` itself, or, when it took its servers from the VM's resolver
  # settings or resolv.conf and those have changed since it was built, a new one built the same
  # way. Its options are the same; the strategy calls this before every poll, as `:inet_res`
  # rereads resolv.conf before a query. resolv.conf is looked at only when the resolver reads it:
  # when the VM gives no server, or a link-local one, whose zone the file gives.
  #
  #     iex> {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:5353"])
  #     iex> ClusterSRV.Resolver.current(resolver) == resolver
  #     true
  @spec current(t()) :: t()
  def current(%__MODULE__{system: nil} = resolver), do: resolver

  def current(%__MODULE__{} = resolver) do
    if system_settings() == resolver.system do
      resolver
    else
      options = [nameservers: [], timeout: resolver.timeout, attempts: resolver.attempts]

      case new(options) do
        {:ok, fresh} -> fresh
        # No server at all for now: keep asking the ones there were.
        {:error, _} -> resolver
      end
    end
  end

  # What a resolver without `nameservers` was built from: the VM's resolver settings, and when
  # and how resolv.conf was last written, but only when the resolver reads that file: when the
  # VM gives no server (hickory reads it), or a link-local one (its zone is read from there).
  defp system_settings do
    {servers, _search} = vm = vm_settings()

    resolv_conf =
      if servers == [] or Enum.any?(servers, &link_local?/1) do
        case :file.read_file_info(~c"/etc/resolv.conf", [:raw, time: :posix]) do
          {:ok, info} -> @resolv_conf_fields |> Enum.map(&elem(info, &1)) |> List.to_tuple()
          {:error, reason} -> reason
        end
      end

    {vm, resolv_conf}
  end

  # fe80::/10, as :inet.ntoa/1 writes it (its first group always has four digits).
  defp link_local?({<<"fe", digit, _, ":", _::binary>>, _port}), do: digit in ~c"89ab"
  defp link_local?(_server), do: false

  # The VM's own resolver settings, refreshed from resolv.conf as :inet_res refreshes them
  # before a query (it rereads the file at most every 5 s, when it has changed). Servers the
  # native side would not take (port 0, an odd address) are left out.
  defp vm_settings do
    if function_exported?(:inet_db, :res_update_conf, 0), do: :inet_db.res_update_conf()

    servers =
      for {ip, port} <-
            :inet_db.res_option(:nameservers) ++ :inet_db.res_option(:alt_nameservers),
          is_integer(port) and port in 1..65_535,
          text = :inet.ntoa(ip),
          is_list(text),
          uniq: true,
          do: {List.to_string(text), port}

    search =
      case :inet_db.res_option(:search) do
        [] -> [:inet_db.res_option(:domain)]
        search -> search
      end

    {servers, for(domain <- search, domain not in [~c"", ~c"."], do: List.to_string(domain))}
  end

  @doc """
  Looks up the records of `name` and waits for the answer: SRV records by default, or with
  `type: :a` or `type: :aaaa` the addresses.

  The caller blocks, but no scheduler does: the lookup runs on the native runtime while the
  caller waits in `receive`. It returns within about `timeout * attempts`.

  ## Options

    * `:type` - `:srv` (the default) for `ClusterSRV.Record`s; `:a` or `:aaaa` for the
      addresses, as `:inet.ip_address()` tuples, sorted, each once.
    * `:fill_addresses` - for SRV: when `true`, targets the answer carried no address for are
      resolved, concurrently: their A records, or their AAAA records when the A answer is
      negative (never after a failed A query). A target that cannot be resolved keeps
      `addresses: []`. This can double the time a lookup takes. Default `false`.
  """
  @spec lookup(t(), String.t(), keyword()) ::
          {:ok, [Record.t()] | [:inet.ip_address()]} | {:error, reason()}
  def lookup(%__MODULE__{} = resolver, name, opts \\ []) do
    case async_lookup(resolver, name, opts) do
      {:error, reason} ->
        {:error, reason}

      ref ->
        receive do
          {:cluster_srv_lookup, ^ref, result} -> result
        after
          reply_timeout(resolver, opts) -> {:error, :timeout}
        end
    end
  end

  @doc """
  Starts a lookup and returns a reference at once, for callers that must stay responsive.

  It takes the options of `lookup/3`. The calling process later receives exactly one message:

      {:cluster_srv_lookup, ref, {:ok, [%ClusterSRV.Record{}]} | {:error, reason}}

  within `deadline/2`. If the native runtime cannot start, it returns `{:error, reason}` instead
  of a reference, and no message follows.
  """
  @spec async_lookup(t(), String.t(), keyword()) :: reference() | {:error, reason()}
  def async_lookup(resolver, name, opts \\ [])

  def async_lookup(%__MODULE__{ref: native}, name, opts) when is_binary(name) do
    ref = make_ref()
    type = type!(Keyword.get(opts, :type, :srv))

    case Native.start_lookup(native, name, type, fill_addresses?(opts), ref) do
      :ok -> ref
      {:error, reason} -> {:error, reason}
    end
  end

  def async_lookup(%__MODULE__{}, name, _opts) when not is_binary(name) do
    raise ArgumentError, "expected the name to look up as a string, got: #{inspect(name)}"
  end

  @doc false
  # Turns the targets of `records` into node names, validating each.
  #
  # A target becomes the node name `application_name@target` (or `application_name@address` with
  # `node_naming: :ip`) only when it is a valid host name (labels of letters, digits and hyphens,
  # at most 63 octets each and 253 in all), lies strictly under `:domain` when one is given, and
  # the name fits in an atom. Duplicates are kept once, in answer order, and at most `:max_nodes`
  # names are accepted. Atoms are made only for accepted names. Over 50 targets are validated on
  # a dirty CPU scheduler, so that a large answer holds no normal scheduler.
  #
  # Options: `:application_name` (required), `:domain` (default `nil`: any domain),
  # `:node_naming` (`:hostname` or `:ip`, default `:hostname`), `:max_nodes` (default `1_000`).
  #
  # Each rejected target comes back with one of these reasons: `:no_service` (the root target
  # `.`), `:invalid_hostname`, `:too_long`, `:outside_domain`, `:service_itself` (the target is
  # the service's own name: the service is not headless), `:no_address` (`:ip` naming and no
  # usable address among the record's), `:over_max_nodes`.
  #
  #     iex> records = [
  #     ...>   %ClusterSRV.Record{priority: 0, weight: 50, port: 4370, ttl: 5, target: "myapp-0.myapp-headless.default.svc.cluster.local"},
  #     ...>   %ClusterSRV.Record{priority: 0, weight: 50, port: 4369, ttl: 5, target: "myapp-0.myapp-headless.default.svc.cluster.local"},
  #     ...>   %ClusterSRV.Record{priority: 0, weight: 50, port: 4370, ttl: 5, target: "my_app.example.com"}
  #     ...> ]
  #     iex> ClusterSRV.Resolver.node_names(records,
  #     ...>   application_name: "myapp",
  #     ...>   domain: "myapp-headless.default.svc.cluster.local"
  #     ...> )
  #     {:ok, %{nodes: [:"myapp@myapp-0.myapp-headless.default.svc.cluster.local"],
  #             rejected: [{"my_app.example.com", :invalid_hostname}]}}
  @spec node_names([Record.t()], keyword()) ::
          {:ok, %{nodes: [node()], rejected: [{String.t(), atom()}]}} | {:error, reason()}
  def node_names(records, opts) do
    with {:ok, answer} <- name_targets(records, opts),
         do: {:ok, Map.take(answer, [:nodes, :rejected])}
  end

  @doc false
  # node_names/2's answer with `by_target`, each accepted target with its node (with
  # `node_naming: :ip`, where the node cannot be told from the target), for the strategy.
  def name_targets(records, opts) do
    candidates =
      for %Record{target: target, addresses: addresses} <- records, do: {target, addresses}

    # The NIF takes 1 to 4 µs a target: past 50 it runs on a dirty scheduler, so that no call
    # holds a normal one much past 0.2 ms (measured: 50 new 230-octet names took 0.22 ms).
    node_names =
      if length(candidates) > @scheduler_targets,
        do: &Native.node_names_dirty/5,
        else: &Native.node_names/5

    result =
      node_names.(
        candidates,
        Keyword.fetch!(opts, :application_name),
        Keyword.get(opts, :domain),
        Keyword.get(opts, :node_naming, :hostname),
        Keyword.get(opts, :max_nodes, 1_000)
      )

    case result do
      {:ok, answer} -> {:ok, Map.take(answer, [:nodes, :rejected, :by_target])}
      {:error, reason} -> {:error, reason}
    end
  end

  @doc false
  # Looks up `name` and turns the answer into node names on the native runtime, replying by
  # message like `async_lookup/3`: the records never reach the caller, which receives only
  #
  #     {:cluster_srv_lookup, ref, {:ok, %{records: count, nodes: [node()], rejected: [{target, reason}],
  #                                        unresolved: [{target, reason}]}}}
  #     {:cluster_srv_lookup, ref, {:error, reason}}
  #
  # It takes the options of `node_names/2`. With `node_naming: :ip`, the targets the rules accept
  # that the answer carried no address for are resolved first, as with `fill_addresses: true`; a
  # target that cannot be resolved is left out of naming and listed in `unresolved`, with the
  # reason of the failed query (`:timeout`, `:servfail`, `{:io, message}`...), or `:no_records`
  # when neither A nor AAAA records exist for it: DNS lists it, so it may be a live pod, and it
  # is neither a node nor a rejection. `unresolved` is `[]` otherwise.
  @spec async_discover(t(), String.t(), keyword()) :: reference() | {:error, reason()}
  def async_discover(%__MODULE__{ref: native}, name, opts) when is_binary(name) do
    ref = make_ref()

    result =
      Native.start_discover(
        native,
        name,
        Keyword.fetch!(opts, :application_name),
        Keyword.get(opts, :domain),
        Keyword.get(opts, :node_naming, :hostname),
        Keyword.get(opts, :max_nodes, 1_000),
        ref
      )

    case result do
      :ok -> ref
      {:error, reason} -> {:error, reason}
    end
  end

  @doc false
  # Looks up several sources at once, on the native runtime, and replies by message like
  # `async_lookup/3`: this is what `ClusterSRV.Strategy` polls with. Each source is
  # `{name, type, basename, domain, node_naming, tcp_first}` (`tcp_first` optional: ask over
  # TCP first, falling back to UDP at once on any TCP failure); the caller receives
  #
  #     {:cluster_srv_lookup, ref, {:ok, [result]}}
  #
  # with a result per source, in their order: for SRV, `{:ok, %{records: count, nodes: [node()],
  # rejected: [{target, reason}], unresolved: [{target, reason}], by_target: [...], tcp:
  # bool}}`, the targets named on the runtime as `async_discover/3` names them; for A and AAAA,
  # `{:ok, %{records: count, addresses: [ip], tcp: bool}}`, which `address_names/3` names (the
  # names are
  # made on the Elixir side, where `:inet.ntoa/1` writes the addresses); or `{:error, reason}`
  # for a source that failed. Every source is asked at once, and each gives its
  # own result within `deadline/2`.
  @spec async_discover_all(t(), [tuple()], pos_integer()) :: reference() | {:error, reason()}
  def async_discover_all(%__MODULE__{ref: native}, sources, max_nodes) do
    ref = make_ref()

    sources =
      for source <- sources do
        case source do
          {name, type, basename, domain, naming} ->
            {name, type!(type), basename, domain, naming, false}

          {name, type, basename, domain, naming, tcp_first} ->
            {name, type!(type), basename, domain, naming, tcp_first == true}
        end
      end

    case Native.start_discover_all(native, sources, max_nodes, ref) do
      :ok -> ref
      {:error, reason} -> {:error, reason}
    end
  end

  @doc false
  # Names the addresses of an A or AAAA answer `basename@address`, the address written as
  # `:inet.ntoa/1` writes it, as dns_cluster names nodes: at most `max_nodes` of them, the others
  # rejected as `:over_max_nodes`. An unspecified address (`0.0.0.0`, `::`) is rejected as
  # `:unspecified_address`: a connect to it would reach this host itself. The addresses are
  # parsed data, never text from DNS, so their atoms are as safe as validated names.
  #
  #     iex> ClusterSRV.Resolver.address_names([{10, 1, 0, 5}, {0xfd00, 0, 0, 0, 0, 0, 0, 1}], "app", 1)
  #     %{nodes: [:"app@10.1.0.5"], rejected: [{"fd00::1", :over_max_nodes}]}
  #
  #     iex> ClusterSRV.Resolver.address_names([{0, 0, 0, 0}, {10, 1, 0, 6}], "app", 10)
  #     %{nodes: [:"app@10.1.0.6"], rejected: [{"0.0.0.0", :unspecified_address}]}
  @spec address_names([:inet.ip_address()], String.t(), pos_integer()) :: %{
          nodes: [node()],
          rejected: [{String.t(), :over_max_nodes | :unspecified_address}]
        }
  def address_names(addresses, basename, max_nodes) do
    {unspecified, usable} = addresses |> Enum.uniq() |> Enum.split_with(&unspecified?/1)
    {taken, over} = Enum.split(usable, max_nodes)

    %{
      nodes: for(ip <- taken, do: :"#{basename}@#{:inet.ntoa(ip)}"),
      rejected:
        for(ip <- unspecified, do: {List.to_string(:inet.ntoa(ip)), :unspecified_address}) ++
          for(ip <- over, do: {List.to_string(:inet.ntoa(ip)), :over_max_nodes})
    }
  end

  defp unspecified?({0, 0, 0, 0}), do: true
  defp unspecified?({0, 0, 0, 0, 0, 0, 0, 0}), do: true
  defp unspecified?(_ip), do: false

  @types [:srv, :a, :aaaa]

  defp type!(type) when type in @types, do: type

  defp type!(type) do
    raise ArgumentError,
          "invalid value for :type: expected one of #{inspect(@types)}, got: #{inspect(type)}. " <>
            "Example: type: :a"
  end

  @doc false
  # The longest a lookup takes before it gives `{:error, :timeout}`, in milliseconds: `timeout ×
  # attempts`, plus 100 ms for the last answer to be read, and as long again with
  # `fill_addresses: true`. It takes a resolver or its options, and the options of `lookup/3`.
  #
  # This is the one place the deadline is computed: the native side is given it, and the
  # strategy waits for it, for the native resolver and a `resolver` function alike.
  #
  #     iex> resolver = %ClusterSRV.Resolver{ref: nil, nameservers: [], timeout: 500, attempts: 3}
  #     iex> ClusterSRV.Resolver.deadline(resolver)
  #     1600
  #     iex> ClusterSRV.Resolver.deadline(resolver, fill_addresses: true)
  #     3200
  #     iex> ClusterSRV.Resolver.deadline(timeout: 500, attempts: 3)
  #     1600
  @spec deadline(t() | keyword(), keyword()) :: pos_integer()
  def deadline(resolver_or_options, opts \\ [])

  def deadline(%__MODULE__{timeout: timeout, attempts: attempts}, opts),
    do: deadline([timeout: timeout, attempts: attempts], opts)

  def deadline(options, opts) when is_list(options) do
    phases = if fill_addresses?(opts), do: 2, else: 1
    phases * (Keyword.fetch!(options, :timeout) * Keyword.fetch!(options, :attempts) + 100)
  end

  @doc false
  # How long a caller waits for a lookup's reply before it gives up with `{:error, :timeout}`:
  # `deadline/2`, plus a margin. The native side always replies within the deadline; the margin
  # only guards against a stuck runtime.
  #
  #     iex> ClusterSRV.Resolver.reply_timeout(timeout: 500, attempts: 3)
  #     2600
  @spec reply_timeout(t() | keyword(), keyword()) :: pos_integer()
  def reply_timeout(resolver_or_options, opts \\ []),
    do: deadline(resolver_or_options, opts) + @reply_margin

  defp fill_addresses?(opts), do: Keyword.get(opts, :fill_addresses, false) == true

  defimpl Inspect do
    @moduledoc false
    def inspect(resolver, _opts) do
      "#ClusterSRV.Resolver<servers: #{Kernel.inspect(resolver.servers)} " <>
        "(#{resolver.source}), timeout: #{resolver.timeout}, attempts: #{resolver.attempts}>"
    end
  end
end
