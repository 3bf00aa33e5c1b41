defmodule ClusterSRV.Lookup do
  @moduledoc false
  # One poll's lookup of every source of the config (each name and record type), by the native
  # resolver or by the user's `resolver` function, in one shape: a result per source,
  # `[{source, result}]`, each `{:ok, %{records: count, nodes: [node()], rejected: [{target,
  # reason}], unresolved: [{target, reason}], by_target: [{target, node}]}}` or `{:error,
  # reason}`. `unresolved` lists, with `node_naming: :ip`, the SRV targets whose addresses could
  # not be resolved (a failed or timed out query, or no address at all for a target DNS lists):
  # they are neither named nor rejected, since they may be live pods; `by_target` gives each
  # named target's node, so that the membership rules can keep the node an unresolved target had.
  # Both are `[]` for A and AAAA sources.
  #
  # The native resolver asks every source at once in one call, and names the nodes of SRV
  # answers on its own runtime (`ClusterSRV.Resolver.async_discover_all/3`); A and AAAA
  # addresses are named `basename@address` (`ClusterSRV.Resolver.address_names/3`). A `resolver`
  # function is called as libcluster calls it (the name as a charlist; `:inet_res.getbyname/2`'s
  # hostent back: an SRV hostent gives records, an `:inet` or `:inet6` one addresses), once per
  # name, in a linked process of its own, so it may block as long as it likes; its records are
  # sorted as the native ones, and with `node_naming: :ip` its targets are resolved with
  # `:inet` by the native resolver's rule (A first, AAAA only after a negative A answer). Either
  # way, a lookup ends by `ClusterSRV.Resolver.reply_timeout/2` at the latest:
  # the resolver's own deadline, plus a margin that guards against a stuck runtime; a lookup that
  # fails as a whole (its deadline, a crash) gives every source that failure.
  #
  # Like `ClusterSRV.Connector`, it is a value its owner keeps: `start/1` starts a lookup, and
  # the owner hands its messages to `handle_info/2`, which says when the lookup has ended.
  #
  #     lookup = ClusterSRV.Lookup.new!(config)
  #     {:ok, lookup} = ClusterSRV.Lookup.start(lookup)
  #     receive do
  #       message ->
  #         case ClusterSRV.Lookup.handle_info(lookup, message) do
  #           {:done, result, duration, lookup} -> ...
  #           :unknown -> ...
  #         end
  #     end

  alias ClusterSRV.{Config, Record, Resolver}

  @enforce_keys [:config]
  defstruct [:config, :resolver, :running, native_sources: [], tcp_first: []]

  @type t :: %__MODULE__{
          config: Config.t(),
          resolver: Resolver.t() | nil,
          running: map() | nil,
          native_sources: [tuple()],
          tcp_first: [boolean()]
        }

  @type result ::
          {:ok,
           %{
             records: non_neg_integer(),
             nodes: [node()],
             rejected: [{String.t(), atom()}],
             unresolved: [{String.t(), term()}],
             by_target: [{String.t(), node()}]
           }}
          | {:error, term()}

  @type results :: [{Config.source(), result()}]

  @doc """
  Prepares the lookups of a validated config. The native resolver is built here, so that a
  malformed nameserver fails the start (with the user's function there is no native lookup,
  but the nameservers are still checked). Raises `ArgumentError` when no resolver can be built.
  """
  @spec new!(Config.t()) :: t()
  def new!(%Config{resolver: fun, resolver_options: options} = config) do
    resolver =
      if fun == nil or options[:nameservers] != [] do
        case Resolver.new(options) do
          {:ok, resolver} ->
            if fun == nil, do: resolver

          {:error, reason} ->
            raise ArgumentError, "cannot build the DNS resolver: #{inspect(reason)}"
        end
      end

    # What the native resolver asks each poll, built once.
    native_sources =
      for source <- config.sources,
          do: {source.name, source.type, source.basename, source.domain, config.node_naming}

    %__MODULE__{
      config: config,
      resolver: resolver,
      native_sources: native_sources,
      tcp_first: Enum.map(native_sources, fn _ -> false end)
    }
  end

  @doc "Whether a lookup is in flight."
  @spec running?(t()) :: boolean()
  def running?(%__MODULE__{running: running}), do: running != nil

  @doc """
  Starts a lookup. The caller later gets the messages that `handle_info/2` turns into its end.
  When it cannot start (the native runtime did not start), it has ended at once:
  `{:done, results, 0, lookup}`, every source's result that failure, as `handle_info/2` gives.
  """
  @spec start(t()) :: {:ok, t()} | {:done, results(), 0, t()}
  def start(%__MODULE__{running: nil, config: config} = lookup) do
    lookup = %{lookup | resolver: lookup.resolver && Resolver.current(lookup.resolver)}
    started = System.monotonic_time()
    fill? = config.node_naming == :ip
    wait = Resolver.reply_timeout(config.resolver_options, fill_addresses: fill?)

    case lookup.resolver do
      nil ->
        parent = self()
        ref = make_ref()

        {pid, monitor} =
          :erlang.spawn_opt(
            fn -> send(parent, {:cluster_srv_lookup, ref, run_function(config)}) end,
            [:link, :monitor]
          )

        {:ok, track(lookup, %{ref: ref, pid: pid, monitor: monitor, started: started}, wait)}

      resolver ->
        # Each source is asked over TCP first when its last answer needed TCP: a hint from
        # the last result, never kept by the resolver, so that no fault can hide it.
        sources = Enum.zip_with(lookup.native_sources, lookup.tcp_first, &Tuple.append/2)

        case Resolver.async_discover_all(resolver, sources, config.max_nodes) do
          {:error, reason} -> {:done, results(config, {:error, reason}), 0, lookup}
          ref -> {:ok, track(lookup, %{ref: ref, pid: nil, monitor: nil, started: started}, wait)}
        end
    end
  end

  defp track(lookup, running, wait) do
    timer = Process.send_after(self(), {:cluster_srv_lookup_deadline, running.ref}, wait)
    %{lookup | running: Map.put(running, :timer, timer)}
  end

  @doc """
  Handles a message of the owner's: the lookup's reply, its deadline, or the end of the
  resolver function's process give `{:done, results, duration, lookup}` (duration in native time
  units); anything else, late replies of lookups given up on included, gives `:unknown`.
  """
  @spec handle_info(t(), term()) :: {:done, results(), integer(), t()} | :unknown
  def handle_info(%__MODULE__{running: %{ref: ref}} = lookup, {:cluster_srv_lookup, ref, result}),
    do: finish(lookup, result)

  def handle_info(
        %__MODULE__{running: %{ref: ref} = running} = lookup,
        {:cluster_srv_lookup_deadline, ref}
      ) do
    if running.pid, do: Process.exit(running.pid, :kill)
    finish(lookup, {:error, :timeout})
  end

  def handle_info(
        %__MODULE__{running: %{monitor: monitor}} = lookup,
        {:DOWN, monitor, :process, _pid, reason}
      )
      when monitor != nil,
      do: finish(lookup, {:error, {:resolver_crashed, reason}})

  def handle_info(%__MODULE__{}, _message), do: :unknown

  defp finish(%{running: running, config: config} = lookup, reply) do
    Process.cancel_timer(running.timer)
    if running.monitor, do: Process.demonitor(running.monitor, [:flush])

    results = results(config, reply)
    tcp_first = for {_source, result} <- results, do: match?({:ok, %{tcp: true}}, result)

    {:done, results, System.monotonic_time() - running.started,
     %{lookup | running: nil, tcp_first: tcp_first}}
  end

  # A result per source: the reply's, with A and AAAA addresses named; a failure of the whole
  # lookup is every source's.
  defp results(config, {:ok, replies}) when length(replies) == length(config.sources) do
    Enum.zip_with(config.sources, replies, fn source, reply ->
      {source, named(source, reply, config)}
    end)
  end

  defp results(config, {:ok, other}), do: results(config, {:error, {:bad_reply, other}})

  defp results(config, {:error, reason}),
    do: for(source <- config.sources, do: {source, {:error, reason}})

  defp named(source, {:ok, %{addresses: addresses, records: records} = answer}, config) do
    {:ok,
     addresses
     |> Resolver.address_names(source.basename, config.max_nodes)
     |> Map.merge(%{records: records, unresolved: [], by_target: []})
     |> Map.put(:tcp, Map.get(answer, :tcp, false))}
  end

  defp named(_source, result, _config), do: result

  @doc """
  Looks up once and waits, returning the SRV records too: what `ClusterSRV.Strategy.discover/1`
  and `mix cluster_srv.check` show. With several sources, the records are every SRV source's,
  and the node names and rejections every source's, each once.
  """
  @spec discover(Config.t()) ::
          {:ok, %{records: [Record.t()], nodes: [node()], rejected: list()}} | {:error, term()}
  def discover(%Config{} = config) do
    found =
      case config.resolver do
        nil ->
          with {:ok, resolver} <- Resolver.new(config.resolver_options) do
            for source <- config.sources, do: native_found(resolver, source, config)
          end

        module when is_atom(module) ->
          for source <- config.sources do
            with {:ok, %{addresses: addresses}} <- module_result(module, source) do
              {:ok,
               Map.put(
                 Resolver.address_names(addresses, source.basename, config.max_nodes),
                 :records,
                 []
               )}
            end
          end

        fun ->
          answers = function_answers(fun, config)
          for source <- config.sources, do: function_found(source, answers[source.name], config)
      end

    case found do
      {:error, reason} -> {:error, reason}
      found -> merge(found)
    end
  end

  defp native_found(resolver, %{type: :srv} = source, config) do
    with {:ok, records} <-
           Resolver.lookup(resolver, source.name, fill_addresses: config.node_naming == :ip),
         {:ok, names} <- Resolver.node_names(records, naming(config, source)) do
      {:ok, Map.put(names, :records, records)}
    end
  end

  defp native_found(resolver, source, config) do
    with {:ok, addresses} <- Resolver.lookup(resolver, source.name, type: source.type) do
      {:ok,
       Map.put(Resolver.address_names(addresses, source.basename, config.max_nodes), :records, [])}
    end
  end

  # Unresolved targets are named with the others here, so this shows them rejected as
  # :no_address.
  defp function_found(%{type: :srv} = source, {:srv, records, _unresolved}, config) do
    with {:ok, names} <- Resolver.node_names(records, naming(config, source)) do
      {:ok, Map.put(names, :records, records)}
    end
  end

  defp function_found(source, answer, config) do
    case function_result(source, answer, config) do
      {:ok, %{addresses: addresses}} ->
        {:ok,
         Map.put(
           Resolver.address_names(addresses, source.basename, config.max_nodes),
           :records,
           []
         )}

      other ->
        other
    end
  end

  # Every source's records, node names and rejections, each once; the first failure when every
  # source failed.
  defp merge(found) do
    case for({:ok, result} <- found, do: result) do
      [] ->
        hd(found)

      results ->
        {:ok,
         %{
           records: Enum.flat_map(results, & &1.records),
           nodes: results |> Enum.flat_map(& &1.nodes) |> Enum.uniq(),
           rejected: results |> Enum.flat_map(& &1.rejected) |> Enum.uniq()
         }}
    end
  end

  defp naming(config, source) do
    [
      application_name: source.basename,
      domain: source.domain,
      node_naming: config.node_naming,
      max_nodes: config.max_nodes
    ]
  end

  # -- The user's resolver function --------------------------------------------------------------

  # The reply, in the native side's shape: a result per source. A module (dns_cluster's
  # resolver) is asked lookup(name, type) for each source, and gives addresses.
  defp run_function(%{resolver: module} = config) when is_atom(module),
    do: {:ok, for(source <- config.sources, do: module_result(module, source))}

  defp run_function(config) do
    answers = function_answers(config.resolver, config)

    {:ok,
     for(source <- config.sources, do: function_result(source, answers[source.name], config))}
  end

  defp function_answers(fun, config) do
    for name <- config.sources |> Enum.map(& &1.name) |> Enum.uniq(),
        into: %{},
        do: {name, function_answer(fun, name, config)}
  end

  # Unresolved targets reach node_names with no address: one the rules reject for another
  # reason stays rejected (the native resolver never asks for those), one rejected only for
  # :no_address is reported unresolved instead, with why.
  defp function_result(%{type: :srv} = source, {:srv, records, unresolved}, config) do
    with {:ok, names} <- Resolver.name_targets(records, naming(config, source)) do
      why = Map.new(unresolved)

      {unresolved, rejected} =
        Enum.split_with(names.rejected, fn {target, reason} ->
          reason == :no_address and Map.has_key?(why, target)
        end)

      {:ok,
       %{
         records: length(records),
         nodes: names.nodes,
         rejected: rejected,
         unresolved: for({target, _} <- unresolved, do: {target, why[target]}),
         by_target: names.by_target,
         tcp: false
       }}
    end
  end

  defp function_result(%{type: :a}, {:addresses, :inet, addresses}, _config),
    do: {:ok, %{records: length(addresses), addresses: Enum.sort(addresses)}}

  defp function_result(%{type: :aaaa}, {:addresses, :inet6, addresses}, _config),
    do: {:ok, %{records: length(addresses), addresses: Enum.sort(addresses)}}

  defp function_result(_source, {:error, reason}, _config), do: {:error, reason}

  # An answer of another type than the source asks for holds none of its records.
  defp function_result(_source, _other_type, _config), do: {:error, :no_records}

  # Calls `fun` with `name` as libcluster does and reads its hostent: an SRV one gives records,
  # an :inet or :inet6 one addresses.
  defp function_answer(fun, name, config),
    do: guarded(fn -> read_answer(fun.(String.to_charlist(name)), config) end)

  defp read_answer(answer, config) do
    case answer do
      {:ok, {:hostent, _name, _aliases, :srv, _count, entries}} when is_list(entries) ->
        # Sorted as the native resolver sorts, so that every pod takes the same max_nodes
        # names from an answer whose order rotates.
        records =
          entries
          |> Enum.flat_map(&srv_entry_to_record/1)
          |> Enum.sort_by(&{&1.priority, sort_key(&1.target), &1.port, &1.weight})

        cond do
          records == [] ->
            {:error, :no_records}

          config.node_naming == :ip ->
            {records, unresolved} = fill_addresses(records)
            {:srv, records, unresolved}

          true ->
            {:srv, records, []}
        end

      {:ok, {:hostent, _name, _aliases, family, _count, addresses}}
      when family in [:inet, :inet6] and is_list(addresses) ->
        case Enum.filter(addresses, &ip?(&1, family)) do
          [] -> {:error, :no_records}
          addresses -> {:addresses, family, addresses}
        end

      {:error, reason} ->
        {:error, reason}

      other ->
        {:error, {:bad_resolver_result, other}}
    end
  end

  # dns_cluster's resolver callback: lookup(name, type) gives a list of addresses, any type.
  defp module_result(module, source),
    do: guarded(fn -> read_addresses(module.lookup(source.name, source.type)) end)

  defp read_addresses(answer) do
    case answer do
      addresses when is_list(addresses) ->
        case Enum.filter(addresses, &(ip?(&1, :inet) or ip?(&1, :inet6))) do
          [] ->
            {:error, :no_records}

          found ->
            {:ok, %{records: length(found), addresses: found |> Enum.uniq() |> Enum.sort()}}
        end

      other ->
        {:error, {:bad_resolver_result, other}}
    end
  end

  # A user's resolver, function or module, that raises, throws or exits fails this lookup
  # only.
  defp guarded(call) do
    call.()
  rescue
    exception -> {:error, {:resolver_raised, Exception.message(exception)}}
  catch
    :throw, value -> {:error, {:resolver_threw, value}}
    :exit, reason -> {:error, {:resolver_exited, reason}}
  end

  defp ip?({_, _, _, _} = ip, :inet), do: :inet.ntoa(ip) != {:error, :einval}
  defp ip?({_, _, _, _, _, _, _, _} = ip, :inet6), do: :inet.ntoa(ip) != {:error, :einval}
  defp ip?(_other, _family), do: false

  # The native side sorts targets lowercased and without the trailing dot.
  defp sort_key(target), do: target |> String.trim_trailing(".") |> String.downcase(:ascii)

  defp srv_entry_to_record({priority, weight, port, target})
       when is_integer(priority) and is_integer(weight) and is_integer(port) and is_list(target) do
    [
      %Record{
        priority: priority,
        weight: weight,
        port: port,
        ttl: 0,
        target: :erlang.list_to_binary(target),
        addresses: []
      }
    ]
  rescue
    ArgumentError -> []
  end

  defp srv_entry_to_record(_malformed), do: []

  # Resolves each distinct target by the native resolver's rule (A first, AAAA only after a
  # negative A answer): the records with the addresses found, and the targets that could not be
  # resolved, written as node_names/2 writes targets, each with why.
  defp fill_addresses(records) do
    resolved =
      records
      |> Enum.map(& &1.target)
      |> Enum.uniq()
      |> Task.async_stream(&{&1, target_addresses(String.to_charlist(&1))},
        max_concurrency: 16,
        ordered: true,
        # The lookup's own deadline bounds the whole of it.
        timeout: :infinity
      )
      |> Enum.map(fn {:ok, result} -> result end)

    found = for {target, {:ok, addresses}} <- resolved, into: %{}, do: {target, addresses}
    unresolved = for {target, {:error, reason}} <- resolved, do: {sort_key(target), reason}
    records = for record <- records, do: %{record | addresses: Map.get(found, record.target, [])}
    {records, unresolved}
  end

  # A failed A query is the target's failure: asking AAAA then would name a dual-stack pod after
  # its IPv6 address, another node. Both negative is :no_records, since the SRV answer lists it.
  defp target_addresses(host) do
    with :negative <- family_addresses(host, :inet, :a),
         :negative <- family_addresses(host, :inet6, :aaaa) do
      {:error, :no_records}
    end
  end

  defp family_addresses(host, family, type) do
    case :inet.getaddrs(host, family) do
      {:ok, addresses} -> {:ok, addresses}
      # OTP gives :nxdomain for every failure of the lookup, a timeout or SERVFAIL included.
      {:error, :nxdomain} -> dns_answer(host, type)
      {:error, reason} -> {:error, reason}
    end
  end

  # What DNS itself answers, to tell a negative answer from a failure: :negative for no such
  # name or no record of the type, the addresses if it answers them this time, else the failure.
  defp dns_answer(host, type) do
    case :inet_res.resolve(host, :in, type) do
      {:ok, message} ->
        case for(
               rr <- :inet_dns.msg(message, :anlist),
               :inet_dns.rr(rr, :type) == type,
               do: :inet_dns.rr(rr, :data)
             ) do
          [] -> :negative
          addresses -> {:ok, Enum.uniq(addresses)}
        end

      {:error, :nxdomain} ->
        :negative

      {:error, {:nxdomain, _message}} ->
        :negative

      {:error, {reason, _message}} ->
        {:error, reason}

      {:error, reason} ->
        {:error, reason}
    end
  end
end
