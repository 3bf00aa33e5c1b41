defmodule ClusterSRV.Bench.Clients do
  @moduledoc """
  The three ways of asking the same BIND for the same SRV name, compared side by side:

    * `:native` - `ClusterSRV.Resolver.lookup/2`;
    * `:inet_res` - `:inet_res.resolve(name, :in, :srv, nameservers: ...)`, what libcluster's
      DNSSRV uses;
    * `:floor` - a prebuilt query sent over `:gen_udp` and read back unparsed: the network floor
      any client pays. When the answer is truncated it goes on over TCP, as a client must.

  And one experiment, for the small answer only:

    * `:dirty` - the whole lookup on a dirty I/O thread, blocking it until the answer comes:
      one UDP exchange with one server, with none of the resolver's resends or TCP (the
      `bench-probe` build's `probe_dirty_lookup`). What that design could gain, at best.

  Each client is built once with `prepare/3` and then called with `run/1`, which returns
  `:ok` or raises, so that a broken client can never pass for a fast one.
  """

  @doc "Prepares `client` for `name` on the BIND at 127.0.0.1:`port`."
  def prepare(:native, name, port) do
    {:ok, resolver} =
      ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:#{port}"], timeout: 2_000, attempts: 1)

    {:native, resolver, name}
  end

  def prepare(:dirty, name, port) do
    {:native, resolver, name} = prepare(:native, name, port)
    {:dirty, resolver, name}
  end

  def prepare(:inet_res, name, port) do
    {:inet_res, String.to_charlist(name), [nameservers: [{{127, 0, 0, 1}, port}], timeout: 2_000]}
  end

  def prepare(:floor, name, port) do
    {:ok, socket} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    :ok = :gen_udp.connect(socket, {127, 0, 0, 1}, port)
    {:floor, socket, port, query_packet(name)}
  end

  @doc "Runs one lookup; returns the number of SRV records seen (0 for the floor)."
  def run({:native, resolver, name}) do
    {:ok, records} = ClusterSRV.Resolver.lookup(resolver, name)
    length(records)
  end

  def run({:dirty, resolver, name}) do
    {:ok, records} = ClusterSRV.Native.probe_dirty_lookup(resolver.ref, name, 2_000)
    length(records)
  end

  def run({:inet_res, name, opts}) do
    {:ok, msg} = :inet_res.resolve(name, :in, :srv, opts)
    length(:inet_dns.msg(msg, :anlist))
  end

  def run({:floor, socket, port, packet}) do
    :ok = :gen_udp.send(socket, packet)
    {:ok, {_ip, _port, answer}} = :gen_udp.recv(socket, 0, 2_000)

    # The TC bit: the answer did not fit, so a real client must ask again over TCP.
    if truncated?(answer) do
      {:ok, tcp} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false, packet: 2])
      :ok = :gen_tcp.send(tcp, packet)
      {:ok, _} = :gen_tcp.recv(tcp, 0, 2_000)
      :gen_tcp.close(tcp)
    end

    0
  end

  @doc "Releases what `prepare/3` opened."
  def close({:floor, socket, _port, _packet}), do: :gen_udp.close(socket)
  def close(_prepared), do: :ok

  defp truncated?(<<_id::16, _qr::1, _op::4, _aa::1, tc::1, _::bitstring>>), do: tc == 1

  # A standard query for SRV, id 0x5353, recursion desired, no EDNS (as :inet_res asks).
  defp query_packet(name) do
    labels =
      name
      |> String.trim_trailing(".")
      |> String.split(".")
      |> Enum.map(&<<byte_size(&1)::8, &1::binary>>)

    <<0x5353::16, 0x0100::16, 1::16, 0::16, 0::16, 0::16>> <>
      IO.iodata_to_binary(labels) <> <<0::8, 33::16, 1::16>>
  end
end
