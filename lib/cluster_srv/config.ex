defmodule ClusterSRV.Config do
  @moduledoc """
  Validation of options, with errors that name the key, the value given and what is expected.

  A bad option is a programmer's mistake, found at start: it raises `ArgumentError`.

  ## Example

      iex> ClusterSRV.Config.resolver_options!(nameservers: ["127.0.0.1:5353"], timeout: 500)
      [nameservers: ["127.0.0.1:5353"], timeout: 500, attempts: 2]

      iex> ClusterSRV.Config.resolver_options!(timeout: -1)
      ** (ArgumentError) invalid value for :timeout: expected a positive integer of milliseconds (at most 600000), got: -1. Example: timeout: 2_000
  """

  @default_timeout 2_000
  @default_attempts 2
  @max_timeout 600_000
  @max_attempts 10

  @resolver_keys [:nameservers, :timeout, :attempts]

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
