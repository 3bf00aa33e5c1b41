defmodule ClusterSRV.Lookup do
  @moduledoc """
  One poll's lookup, by the native resolver or by the user's `resolver` function, in one
  shape: `{:ok, %{records: count, nodes: [node()], rejected: [{target, reason}]}}` or
  `{:error, reason}`.

  The native resolver looks up and names nodes on its own runtime
  (`ClusterSRV.Resolver.async_discover/3`). A `resolver` function is called as libcluster
  calls it (the query as a charlist; `:inet_res.getbyname/2`'s hostent back) in a linked
  process of its own, so it may block as long as it likes; its records are sorted as the
  native ones, and with `node_naming: :ip` its targets are resolved with `:inet`. Either way,
  a lookup ends by `ClusterSRV.Resolver.reply_timeout/2` at the latest: the resolver's own
  deadline, plus a margin that guards against a stuck runtime.

  Like `ClusterSRV.Connector`, it is a value its owner keeps: `start/1` starts a lookup, and
  the owner hands its messages to `handle_info/2`, which says when the lookup has ended.

      lookup = ClusterSRV.Lookup.new!(config)
      {:ok, lookup} = ClusterSRV.Lookup.start(lookup)
      receive do
        message ->
          case ClusterSRV.Lookup.handle_info(lookup, message) do
            {:done, result, duration, lookup} -> ...
            :unknown -> ...
          end
      end
  """

  alias ClusterSRV.{Config, Record, Resolver}

  @enforce_keys [:config]
  defstruct [:config, :resolver, :running]

  @type t :: %__MODULE__{
          config: Config.t(),
          resolver: Resolver.t() | nil,
          running: map() | nil
        }

  @type result ::
          {:ok, %{records: non_neg_integer(), nodes: [node()], rejected: [{String.t(), atom()}]}}
          | {:error, term()}

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

    %__MODULE__{config: config, resolver: resolver}
  end

  @doc "Whether a lookup is in flight."
  @spec running?(t()) :: boolean()
  def running?(%__MODULE__{running: running}), do: running != nil

  @doc """
  Starts a lookup. The caller later gets the messages that `handle_info/2` turns into its end.
  Returns `{:error, reason, lookup}` when it cannot start (the native runtime did not start).
  """
  @spec start(t()) :: {:ok, t()} | {:error, term(), t()}
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
        case Resolver.async_discover(resolver, config.query, naming(config)) do
          {:error, reason} -> {:error, reason, lookup}
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
  resolver function's process give `{:done, result, duration, lookup}` (duration in native time
  units); anything else, late replies of lookups given up on included, gives `:unknown`.
  """
  @spec handle_info(t(), term()) :: {:done, result(), integer(), t()} | :unknown
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

  defp finish(%{running: running} = lookup, result) do
    Process.cancel_timer(running.timer)
    if running.monitor, do: Process.demonitor(running.monitor, [:flush])
    {:done, result, System.monotonic_time() - running.started, %{lookup | running: nil}}
  end

  @doc """
  Looks up once and waits, returning the records too: what `ClusterSRV.Strategy.discover/1`
  and `mix cluster_srv.check` show.
  """
  @spec discover(Config.t()) ::
          {:ok, %{records: [Record.t()], nodes: [node()], rejected: list()}} | {:error, term()}
  def discover(%Config{} = config) do
    records =
      case config.resolver do
        nil ->
          with {:ok, resolver} <- Resolver.new(config.resolver_options) do
            Resolver.lookup(resolver, config.query, fill_addresses: config.node_naming == :ip)
          end

        fun ->
          function_records(fun, config)
      end

    with {:ok, records} <- records,
         {:ok, names} <- Resolver.node_names(records, naming(config)) do
      {:ok, Map.put(names, :records, records)}
    end
  end

  defp naming(config) do
    [
      application_name: config.application_name,
      domain: config.domain,
      node_naming: config.node_naming,
      max_nodes: config.max_nodes
    ]
  end

  # -- The user's resolver function --------------------------------------------------------------

  defp run_function(config) do
    with {:ok, records} <- function_records(config.resolver, config),
         {:ok, names} <- Resolver.node_names(records, naming(config)) do
      {:ok, Map.put(names, :records, length(records))}
    end
  end

  # Calls `fun` as libcluster does and turns its hostent into records.
  defp function_records(fun, config) do
    case fun.(String.to_charlist(config.query)) do
      {:ok, {:hostent, _name, _aliases, :srv, _count, entries}} when is_list(entries) ->
        # Sorted as the native resolver sorts, so that every pod takes the same max_nodes
        # names from an answer whose order rotates.
        records =
          entries
          |> Enum.flat_map(&srv_entry_to_record/1)
          |> Enum.sort_by(&{&1.priority, sort_key(&1.target), &1.port, &1.weight})

        cond do
          records == [] -> {:error, :no_records}
          config.node_naming == :ip -> {:ok, fill_addresses(records)}
          true -> {:ok, records}
        end

      {:error, reason} ->
        {:error, reason}

      other ->
        {:error, {:bad_resolver_result, other}}
    end
  rescue
    exception -> {:error, {:resolver_raised, Exception.message(exception)}}
  end

  # The native side sorts targets lowercased and without the trailing dot.
  defp sort_key(target), do: target |> String.trim_trailing(".") |> ascii_downcase()

  defp ascii_downcase(text), do: for(<<byte <- text>>, into: "", do: <<downcase(byte)>>)
  defp downcase(byte) when byte in ?A..?Z, do: byte + 32
  defp downcase(byte), do: byte

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

  defp fill_addresses(records) do
    records
    |> Task.async_stream(
      fn record ->
        host = String.to_charlist(record.target)

        addresses =
          case :inet.getaddrs(host, :inet) do
            {:ok, addresses} ->
              addresses

            {:error, _} ->
              case :inet.getaddrs(host, :inet6) do
                {:ok, addresses} -> addresses
                {:error, _} -> []
              end
          end

        %{record | addresses: addresses}
      end,
      max_concurrency: 16,
      ordered: true,
      # The lookup's own deadline bounds the whole of it.
      timeout: :infinity
    )
    |> Enum.map(fn {:ok, record} -> record end)
  end
end
