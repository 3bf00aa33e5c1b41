defmodule ClusterSRV.Bench.Probe do
  @moduledoc """
  Where the time of one small native lookup goes inside the VM, step by step, beside the raw
  floor's two steps, from the `bench-probe` build's `probe_lookup` (a `start_lookup` whose
  reply carries the wall-clock time of each step; see native/cluster_srv/src/lib.rs):

    * **the NIF call** - from the caller's call to the NIF running;
    * **the query sent** - on the caller's scheduler: a fresh socket (made, connected) and the
      query encoded and sent;
    * **the runtime's thread takes over** - until the lookup's task runs (this overlaps the
      server's answer, which is on its way meanwhile);
    * **answer read and decoded** - on the runtime: waiting for the answer, reading, checking
      and decoding it, and making the records;
    * **terms built** - the records made into Elixir terms, on the runtime;
    * **the reply reaches the caller** - the message sent from the runtime's thread, a
      scheduler woken, and the caller's `receive` matching it.

  The floor's steps: the prebuilt query sent on its kept `:gen_udp` socket, and the answer
  received (the server's time, the kernel, and the VM's own poller waking the caller). Probe
  and floor alternate round by round.
  """

  alias ClusterSRV.Bench.{Clients, Stats}
  alias ClusterSRV.Harness.DNS

  @steps [:nif_call, :sent, :runtime_takes_over, :answered, :terms, :reply]

  @doc false
  def run(dns, name, quick?) do
    {rounds, per_round} = if quick?, do: {3, 100}, else: {10, 300}
    {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: [DNS.nameserver(dns)], attempts: 1)
    floor = Clients.prepare(:floor, name, dns.port)

    for _ <- 1..50, do: {probe(resolver, name), floor_steps(floor)}

    {probes, floors} =
      for _ <- 1..rounds, kind <- Enum.shuffle([:probe, :floor]), reduce: {[], []} do
        {probes, floors} ->
          case kind do
            :probe -> {for(_ <- 1..per_round, do: probe(resolver, name)) ++ probes, floors}
            :floor -> {probes, for(_ <- 1..per_round, do: floor_steps(floor)) ++ floors}
          end
      end

    Clients.close(floor)

    %{
      native: medians(@steps ++ [:total], probes),
      floor: medians([:send, :receive, :total], floors),
      n: length(probes)
    }
  end

  defp medians(keys, samples),
    do: Map.new(keys, fn key -> {key, Stats.median(Enum.map(samples, &(&1[key] / 1000)))} end)

  defp probe(resolver, name) do
    tag = make_ref()
    called = :os.system_time(:nanosecond)
    :ok = ClusterSRV.Native.probe_lookup(resolver.ref, name, tag)

    receive do
      {:cluster_srv_probe, ^tag, {:ok, [_ | _]}, [entered, sent, task, found, encoded]} ->
        received = :os.system_time(:nanosecond)

        %{
          nif_call: entered - called,
          sent: sent - entered,
          runtime_takes_over: task - sent,
          answered: found - task,
          terms: encoded - found,
          reply: received - encoded,
          total: received - called
        }

      {:cluster_srv_probe, ^tag, other, _stamps} ->
        raise "the probe's lookup failed: #{inspect(other)}"
    after
      5_000 -> raise "the probe's lookup did not reply"
    end
  end

  defp floor_steps({:floor, socket, _port, packet}) do
    started = :os.system_time(:nanosecond)
    :ok = :gen_udp.send(socket, packet)
    sent = :os.system_time(:nanosecond)
    {:ok, {_ip, _port, _answer}} = :gen_udp.recv(socket, 0, 2_000)
    received = :os.system_time(:nanosecond)
    %{send: sent - started, receive: received - sent, total: received - started}
  end
end
