defmodule ClusterSRV.Resolver do
  @moduledoc """
  Native DNS SRV lookups.

  The work runs in Rust (hickory-resolver) on one shared tokio runtime with two named threads,
  so a lookup never occupies a BEAM scheduler while it waits for the network.

      {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:5353"], timeout: 2_000, attempts: 2)

      {:ok, records} = ClusterSRV.Resolver.lookup(resolver, "myapp-headless.default.svc.cluster.local.")
      # [%ClusterSRV.Record{priority: 0, weight: 33, port: 4370, ttl: 5,
      #    target: "myapp-0.myapp-headless.default.svc.cluster.local", addresses: [{127, 0, 0, 10}]}, ...]

      {:error, :nxdomain} = ClusterSRV.Resolver.lookup(resolver, "missing.default.svc.cluster.local.")

  ## Options

    * `:nameservers` - the servers to ask, each as `"ip"` (port 53), `"ip:port"`,
      `"[ipv6]:port"`, `{ip_string, port}` or `{ip_tuple, port}`. When left out, the system's
      `/etc/resolv.conf` is used, with its search list and `ndots`.
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
    * `{:invalid_name, name}` - the name is not a valid DNS name.
    * `{:io, message}` - anything else: a network error, a malformed answer, another response code.
    * `{:panic, message}` - a bug in the native code, caught before it reached the VM.
  """

  alias ClusterSRV.{Config, Native, Record}

  @enforce_keys [:ref, :nameservers, :timeout, :attempts]
  defstruct [:ref, :nameservers, :timeout, :attempts]

  @typedoc "A configured resolver. Share it freely: lookups do not change it."
  @type t :: %__MODULE__{
          ref: reference(),
          nameservers: list(),
          timeout: pos_integer(),
          attempts: pos_integer()
        }

  @type reason ::
          :nxdomain
          | :no_records
          | :timeout
          | :servfail
          | :refused
          | {:invalid_name, String.t()}
          | {:io, String.t()}
          | {:panic, String.t()}

  # Margin over the native deadline before the caller stops waiting. The native side always
  # replies within timeout * attempts (plus 100 ms for a TCP retry); this only guards a bug.
  @reply_margin 1_000

  @doc """
  Builds a resolver. No query is sent until the first lookup.

  Raises `ArgumentError` for a malformed option, naming the value. Returns `{:error, reason}`
  only when the system configuration cannot be read (when `:nameservers` is left out).
  """
  @spec new(keyword()) :: {:ok, t()} | {:error, reason()}
  def new(opts \\ []) do
    opts = Config.resolver_options!(opts)
    nameservers = opts[:nameservers]
    terms = Enum.map(nameservers, &Config.nameserver_term!(&1, nameservers))

    case Native.resolver_new(terms, opts[:timeout], opts[:attempts]) do
      {:ok, ref} ->
        {:ok, struct!(__MODULE__, [ref: ref] ++ opts)}

      {:error, {:invalid_nameserver, index, why}} ->
        Config.invalid_nameserver!(Enum.at(nameservers, index), nameservers, why)

      {:error, reason} ->
        {:error, reason}
    end
  end

  @doc """
  Looks up the SRV records of `name` and waits for the answer.

  The caller blocks, but no scheduler does: the lookup runs on the native runtime while the
  caller waits in `receive`. It returns within about `timeout * attempts`.
  """
  @spec lookup(t(), String.t()) :: {:ok, [Record.t()]} | {:error, reason()}
  def lookup(%__MODULE__{} = resolver, name) do
    case async_lookup(resolver, name) do
      {:error, reason} ->
        {:error, reason}

      ref ->
        receive do
          {:cluster_srv_lookup, ^ref, result} -> result
        after
          deadline(resolver) + @reply_margin -> {:error, :timeout}
        end
    end
  end

  @doc """
  Starts a lookup and returns a reference at once, for callers that must stay responsive.

  The calling process later receives exactly one message:

      {:cluster_srv_lookup, ref, {:ok, [%ClusterSRV.Record{}]} | {:error, reason}}

  within about `timeout * attempts`. If the native runtime cannot start, it returns
  `{:error, reason}` instead of a reference, and no message follows.
  """
  @spec async_lookup(t(), String.t()) :: reference() | {:error, reason()}
  def async_lookup(%__MODULE__{ref: native}, name) when is_binary(name) do
    ref = make_ref()

    case Native.start_lookup(native, name, ref) do
      :ok -> ref
      {:error, reason} -> {:error, reason}
    end
  end

  def async_lookup(%__MODULE__{}, name) do
    raise ArgumentError, "expected the name to look up as a string, got: #{inspect(name)}"
  end

  @doc """
  The longest a lookup takes before it gives `{:error, :timeout}`, in milliseconds.

      iex> ClusterSRV.Resolver.deadline(%ClusterSRV.Resolver{ref: nil, nameservers: [], timeout: 500, attempts: 3})
      1600
  """
  @spec deadline(t()) :: pos_integer()
  def deadline(%__MODULE__{timeout: timeout, attempts: attempts}), do: timeout * attempts + 100

  defimpl Inspect do
    def inspect(resolver, _opts) do
      "#ClusterSRV.Resolver<nameservers: #{Kernel.inspect(resolver.nameservers)}, " <>
        "timeout: #{resolver.timeout}, attempts: #{resolver.attempts}>"
    end
  end
end
