defmodule ClusterSRV.Harness.HostileDNS do
  @moduledoc """
  A DNS server that misbehaves on purpose, over UDP and TCP on one port of 127.0.0.1.

  It answers for `<case>.hostile.test.`, and the first label picks the misbehaviour:

    * `many` - 1,940 SRV records, too many for UDP (it answers TC there), mostly invalid
      targets: bytes outside `[a-z0-9-]` (`_`, a space, `@`, NUL, UTF-8, an escaped dot),
      names outside the service's domain; and 20 valid pods `pod-N.many.hostile.test`, each
      listed twice and again in uppercase. The message itself is well-formed.
    * `flood` - 20 fresh random valid targets under `flood.hostile.test` on every query: an
      attempt to flood the atom table.
    * `longname` - a target of more than 255 octets: a malformed message.
    * `longlabel` - a target with a label length over 63: a malformed message.
    * `garbage` - a valid header announcing answers, followed by random bytes.
    * `loop` - a target whose compression pointer points at itself.
    * `wrongid` - an answer with another query ID, and nothing else.
    * `otherq` - an answer to another question, and nothing else.
    * `tcptrunc` - TC over UDP; over TCP, a length prefix promising more than it sends.
    * `slow` - a valid answer, 1.5 s late.
    * `silent` - nothing at all.
    * `ok` - three valid pods, for comparison.
    * `panic` - the target `panic.test-panic.invalid`, on which name parsing panics on purpose
      in test builds (and nowhere else).
    * `fill` - targets with no address in the answer: `ok-0.fill.hostile.test`, whose A query
      is answered (127.0.0.7), `hang-0.fill.hostile.test`, whose A query never is, and 20
      invalid and 3 outside targets (the answer stays under the 1,232 bytes a client asks for). Every A query is counted (`a_queries/1`).
      AAAA queries, for any name, are answered `fd00::7`: a client that asks AAAA after an A
      query failed names a dual-stack pod after the wrong address.

  Cases that play odd but real servers, each answering with the three valid pods of `ok` in
  the end:

    * `bigudp` - 200 pods in one UDP answer of about 5 KB, without TC, whatever size the query
      advertised.
    * `formerr`, `notimp` - FORMERR (without the question, as some old servers send it) or
      NOTIMP to a query with EDNS; the answer to one without.
    * `servfail` - SERVFAIL.
    * `tcpclose` - TC over UDP; over TCP, the answer, then the connection is closed at once.
    * `tcpidle` - TC over UDP; over TCP, the answer, and the connection is closed once it has
      been idle for 1 s, as BIND and CoreDNS close idle connections.
    * `tcpreset` - TC over UDP; over TCP, the connection is reset instead of answered.
    * `tcpdelay` - TC over UDP; over TCP, the answer 200 ms late.
    * `tcpsilent` - TC over UDP; over TCP, the connection is accepted and never answered.
    * `tcppartial` - TC over UDP; over TCP, TC again with the three pods of `ok`: part of a
      set too large for one message, as BIND answers a query without EDNS.

  The name `switch.hostile.test.` answers as whatever case `switch/2` last set (`ok` at start),
  so a test can run one long-lived resolver or strategy through a fault and back.

  `message/2` builds the bytes of a case's answer, so the fuzzing corpus is made of the same
  cases.
  """
  use GenServer

  import Bitwise
  import ClusterSRV.Harness.DNSMessage, only: [header: 6, encode_labels: 1]

  defstruct [:pid, :port]

  @zone "hostile.test"

  def start! do
    {:ok, pid} = GenServer.start_link(__MODULE__, [])
    GenServer.call(pid, :info)
  end

  def stop(%__MODULE__{pid: pid}) do
    GenServer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  def nameserver(%__MODULE__{port: port}), do: "127.0.0.1:#{port}"

  @doc "The names asked for A records so far, lowercase, without the trailing dot."
  def a_queries(%__MODULE__{pid: pid}), do: GenServer.call(pid, :a_queries)

  @doc "Makes `switch.hostile.test.` answer as `kase` from now on."
  def switch(%__MODULE__{pid: pid}, kase), do: GenServer.call(pid, {:switch, kase})

  @doc "How many TCP connections the server has accepted so far."
  def tcp_connections(%__MODULE__{pid: pid}), do: GenServer.call(pid, :tcp_connections)

  @doc "The SRV name of a case, with the trailing dot."
  def name(kase), do: "#{kase}.#{@zone}."

  @doc "The domain a case's valid pods lie under, as the strategy's rules take it."
  def domain(kase), do: "#{kase}.#{@zone}"

  # -- Server ------------------------------------------------------------------------------------

  @impl true
  def init(_) do
    {:ok, tcp} =
      :gen_tcp.listen(0, [
        :binary,
        ip: {127, 0, 0, 1},
        packet: :raw,
        active: false,
        reuseaddr: true
      ])

    {:ok, port} = :inet.port(tcp)
    {:ok, udp} = :gen_udp.open(port, [:binary, ip: {127, 0, 0, 1}, active: true])
    server = self()
    # The switch's case, read by the TCP handlers too.
    switch = :ets.new(:hostile_switch, [:public, read_concurrency: true])
    :ets.insert(switch, {:case, "ok"})
    acceptor = spawn_link(fn -> accept_loop(tcp, server, switch) end)

    {:ok,
     %{
       tcp: tcp,
       udp: udp,
       port: port,
       acceptor: acceptor,
       a_queries: [],
       switch: switch,
       tcp_connections: 0
     }}
  end

  @impl true
  def handle_call(:info, _from, state),
    do: {:reply, %__MODULE__{pid: self(), port: state.port}, state}

  def handle_call(:a_queries, _from, state), do: {:reply, Enum.reverse(state.a_queries), state}

  def handle_call({:switch, kase}, _from, state) do
    :ets.insert(state.switch, {:case, kase})
    {:reply, :ok, state}
  end

  def handle_call(:tcp_connections, _from, state), do: {:reply, state.tcp_connections, state}

  @impl true
  def handle_info({:udp, socket, ip, port, query}, state) do
    state =
      case a_query_name(query) do
        nil -> state
        name -> %{state | a_queries: [name | state.a_queries]}
      end

    # Replies that wait (slow) must not hold up the others.
    switch = state.switch

    spawn(fn ->
      case respond(query, :udp, switch) do
        {:reply, bytes} -> :gen_udp.send(socket, ip, port, bytes)
        {:later, ms, bytes} -> Process.sleep(ms) && :gen_udp.send(socket, ip, port, bytes)
        :none -> :ok
      end
    end)

    {:noreply, state}
  end

  def handle_info(:tcp_accepted, state),
    do: {:noreply, %{state | tcp_connections: state.tcp_connections + 1}}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    :gen_tcp.close(state.tcp)
    :gen_udp.close(state.udp)
    :ok
  end

  defp accept_loop(listen, server, switch) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        send(server, :tcp_accepted)
        pid = spawn(fn -> serve_tcp(socket, switch) end)
        :gen_tcp.controlling_process(socket, pid)
        send(pid, :go)
        accept_loop(listen, server, switch)

      {:error, _} ->
        :ok
    end
  end

  defp serve_tcp(socket, switch) do
    receive do: (:go -> :ok)
    serve_tcp_queries(socket, switch, 30_000)
  end

  defp serve_tcp_queries(socket, switch, idle) do
    with {:ok, <<length::16>>} <- :gen_tcp.recv(socket, 2, idle),
         {:ok, query} <- :gen_tcp.recv(socket, length, 5_000) do
      case respond(query, :tcp, switch) do
        {:reply, bytes} ->
          send_framed(socket, bytes)
          serve_tcp_queries(socket, switch, idle)

        {:tcp_short, bytes} ->
          # Promise the whole message, send a tenth of it, and hang up.
          :gen_tcp.send(
            socket,
            <<byte_size(bytes)::16, binary_part(bytes, 0, div(byte_size(bytes), 10))::binary>>
          )

          :gen_tcp.close(socket)

        {:tcp_close, bytes} ->
          send_framed(socket, bytes)
          :gen_tcp.close(socket)

        {:tcp_idle, bytes} ->
          send_framed(socket, bytes)
          serve_tcp_queries(socket, switch, 1_000)

        :tcp_reset ->
          # A linger of 0 makes close send RST instead of FIN.
          :inet.setopts(socket, linger: {true, 0})
          :gen_tcp.close(socket)

        {:later, ms, bytes} ->
          Process.sleep(ms)
          send_framed(socket, bytes)
          serve_tcp_queries(socket, switch, idle)

        :none ->
          serve_tcp_queries(socket, switch, idle)
      end
    else
      _ -> :gen_tcp.close(socket)
    end
  end

  defp send_framed(socket, bytes),
    do: :gen_tcp.send(socket, <<byte_size(bytes)::16, bytes::binary>>)

  # -- Answers -----------------------------------------------------------------------------------

  @doc false
  def respond(query, transport, switch \\ nil) do
    case parse_query(query) do
      {:ok, id, question, "switch"} ->
        [{:case, kase}] = :ets.lookup(switch, :case)
        answer(kase, id, question, transport, edns?(query))

      {:ok, id, question, kase} ->
        answer(kase, id, question, transport, edns?(query))

      :error ->
        :none
    end
  end

  # A query with a record in its additional section carries EDNS's OPT.
  defp edns?(<<_::80, additional::16, _::binary>>), do: additional > 0

  defp answer("formerr", id, _question, _transport, true),
    do: {:reply, header(id, 0x8401, 0, 0, 0, 0)}

  defp answer("notimp", id, question, _transport, true),
    do: {:reply, header(id, 0x8404, 1, 0, 0, 0) <> question}

  defp answer(kase, id, question, _transport, _edns) when kase in ["formerr", "notimp"],
    do: {:reply, message("ok", id, question)}

  defp answer("servfail", id, question, _transport, _edns),
    do: {:reply, header(id, 0x8402, 1, 0, 0, 0) <> question}

  defp answer("bigudp", id, question, _transport, _edns),
    do: {:reply, srv_answer(id, question, for(i <- 0..199, do: {:under, ["pod-#{i}"]}))}

  defp answer(kase, id, question, :udp, _edns)
       when kase in ["tcpclose", "tcpidle", "tcpreset", "tcpdelay", "tcpsilent", "tcppartial"],
       do: {:reply, truncated(id, question)}

  defp answer("tcpclose", id, question, :tcp, _), do: {:tcp_close, message("ok", id, question)}
  defp answer("tcpidle", id, question, :tcp, _), do: {:tcp_idle, message("ok", id, question)}
  defp answer("tcpreset", _id, _question, :tcp, _), do: :tcp_reset
  defp answer("tcpdelay", id, question, :tcp, _), do: {:later, 200, message("ok", id, question)}
  defp answer("tcpsilent", _id, _question, :tcp, _), do: :none

  defp answer("tcppartial", id, question, :tcp, _),
    do: {:reply, truncate(message("ok", id, question))}

  defp answer(kase, id, question, transport, _edns), do: answer(kase, id, question, transport)

  defp answer("silent", _id, _question, _transport), do: :none

  defp answer(_kase, id, <<_::binary>> = question, _)
       when binary_part(question, byte_size(question) - 4, 2) == <<1::16>>,
       do: a_answer(id, question)

  defp answer(_kase, id, <<_::binary>> = question, _)
       when binary_part(question, byte_size(question) - 4, 2) == <<28::16>> do
    record = <<0xC00C::16, 28::16, 1::16, 5::32, 16::16, 0xFD00::16, 0::96, 7::16>>
    {:reply, header(id, 0x8400, 1, 1, 0, 0) <> question <> record}
  end

  defp answer("slow", id, question, _), do: {:later, 1_500, message("ok", id, question)}
  defp answer("many", id, question, :udp), do: {:reply, truncated(id, question)}
  defp answer("tcptrunc", id, question, :udp), do: {:reply, truncated(id, question)}
  defp answer("tcptrunc", id, question, :tcp), do: {:tcp_short, message("ok", id, question)}
  defp answer(kase, id, question, _), do: {:reply, message(kase, id, question)}

  @doc """
  The answer to `kase` for a query with `id` and the raw `question` section (name, type and
  class as they were on the wire).
  """
  def message(kase, id \\ 0x1234, question \\ nil)

  def message(kase, id, nil), do: message(kase, id, question_bytes(name(kase)))

  def message("many", id, question), do: srv_answer(id, question, many_targets())

  def message("flood", id, question) do
    targets =
      for _ <- 1..20,
          do: {:under, ["p#{:rand.uniform(1_000_000_000)}x#{System.unique_integer([:positive])}"]}

    srv_answer(id, question, targets)
  end

  def message("ok", id, question),
    do: srv_answer(id, question, for(i <- 0..2, do: {:under, ["pod-#{i}"]}))

  def message("longname", id, question),
    do: srv_answer(id, question, [{:absolute, List.duplicate(String.duplicate("a", 63), 5)}])

  # A label length byte of 64 to 191 is not a length: 0x40 and 0x80 mark extended label
  # types, which DNS never defined for use.
  def message("longlabel", id, question) do
    target = <<70>> <> String.duplicate("a", 70) <> <<0>>
    raw_srv_answer(id, question, [target])
  end

  def message("garbage", id, question) do
    header(id, 0x8400, 1, 3, 0, 0) <> question <> :rand.bytes(120)
  end

  # The record's target is a pointer to its own offset: decoding it would never end.
  def message("loop", id, question) do
    prefix = header(id, 0x8400, 1, 1, 0, 0) <> question
    rr_fixed = <<0xC00C::16, 33::16, 1::16, 5::32, 8::16, 0::16, 1::16, 4370::16>>
    target_offset = byte_size(prefix) + byte_size(rr_fixed)
    prefix <> rr_fixed <> <<0b11::2, target_offset::14>>
  end

  def message("fill", id, question) do
    targets =
      [{:under, ["ok-0"]}, {:under, ["hang-0"]}] ++
        for(i <- 0..19, do: {:under, ["bad_#{i}"]}) ++
        for(i <- 0..2, do: {:absolute, ["evil#{i}", "example", "com"]})

    srv_answer(id, question, targets)
  end

  def message("panic", id, question),
    do: srv_answer(id, question, [{:absolute, ["panic", "test-panic", "invalid"]}])

  def message("wrongid", id, question), do: message("ok", bxor(id, 0xFFFF), question)

  def message("otherq", id, _question), do: message("ok", id, question_bytes("other.#{@zone}."))

  def message(kase, id, question) when kase in ["tcptrunc", "slow"],
    do: message("ok", id, question)

  def message(_unknown, id, question), do: header(id, 0x8403, 1, 0, 0, 0) <> question

  @doc """
  Writes each case's answer to `dir` as `<case>.bin`: the seed corpus of the Rust fuzzing
  (`make fuzz-corpus`).
  """
  def write_corpus!(dir) do
    File.mkdir_p!(dir)

    for kase <- ~w(ok many flood longname longlabel garbage loop wrongid otherq) do
      File.write!(Path.join(dir, "#{kase}.bin"), message(kase))
    end

    :ok
  end

  defp truncated(id, question), do: header(id, 0x8600, 1, 0, 0, 0) <> question

  # The same message with TC set in its flags.
  defp truncate(<<id::16, flags::16, rest::binary>>),
    do: <<id::16, bor(flags, 0x0200)::16, rest::binary>>

  # About 2,000 records in a well-formed message; targets under the service name point back at
  # the question's name, so the whole answer fits in one TCP message. Exactly 20 distinct
  # valid pods: each listed twice, and again in uppercase. Everything else is invalid.
  defp many_targets do
    bad = ["my_pod", "my pod", "a@b", "nul\0byte", "caf\u00e9", "dotted\\.label"]
    valid = for i <- 0..19, do: {:under, ["pod-#{i}"]}

    others =
      for i <- 0..1_899 do
        case rem(i, 10) do
          9 -> {:absolute, ["evil#{i}", "example", "com"]}
          8 -> {:under, ["POD-#{rem(i, 20)}"]}
          _ -> {:under, [Enum.at(bad, rem(i, length(bad))) <> "#{i}"]}
        end
      end

    valid ++ others ++ valid
  end

  defp srv_answer(id, question, targets) do
    rdatas =
      for target <- targets do
        encoded =
          case target do
            # Labels, then a pointer to the question's name: the service's own domain.
            {:under, labels} -> encode_labels(labels) <> <<0xC00C::16>>
            {:absolute, labels} -> encode_labels(labels) <> <<0>>
          end

        encoded
      end

    raw_srv_answer(id, question, rdatas)
  end

  defp raw_srv_answer(id, question, encoded_targets) do
    records =
      for target <- encoded_targets do
        rdata = <<0::16, 1::16, 4370::16>> <> target
        <<0xC00C::16, 33::16, 1::16, 5::32, byte_size(rdata)::16>> <> rdata
      end

    header(id, 0x8400, 1, length(records), 0, 0) <> question <> IO.iodata_to_binary(records)
  end

  defp question_bytes(name) do
    labels = name |> String.trim_trailing(".") |> String.split(".")
    encode_labels(labels) <> <<0, 33::16, 1::16>>
  end

  # A questions: `hang-*` names are never answered, others get 127.0.0.7.
  defp a_answer(id, question) do
    case question_end(question, 0) do
      {:ok, _, "hang" <> _} ->
        :none

      _ ->
        record = <<0xC00C::16, 1::16, 1::16, 5::32, 4::16, 127, 0, 0, 7>>
        {:reply, header(id, 0x8400, 1, 1, 0, 0) <> question <> record}
    end
  end

  defp a_query_name(query) do
    with {:ok, _id, question, _kase} <- parse_query(query),
         <<1::16, _class::16>> <- binary_part(question, byte_size(question) - 4, 4) do
      question |> labels(0, []) |> Enum.join(".") |> String.downcase()
    else
      _ -> nil
    end
  end

  defp labels(bytes, offset, acc) do
    case bytes do
      <<_::binary-size(offset), 0, _::binary>> ->
        Enum.reverse(acc)

      <<_::binary-size(offset), n, label::binary-size(n), _::binary>> ->
        labels(bytes, offset + 1 + n, [label | acc])
    end
  end

  # The query's ID, its question section as it came, and the case (the first label).
  defp parse_query(<<id::16, _flags::16, 1::16, _::48, rest::binary>>) do
    case question_end(rest, 0) do
      {:ok, name_length, first_label} when byte_size(rest) >= name_length + 4 ->
        {:ok, id, binary_part(rest, 0, name_length + 4), String.downcase(first_label)}

      _ ->
        :error
    end
  end

  defp parse_query(_), do: :error

  defp question_end(bytes, offset, first \\ nil) do
    case bytes do
      <<_::binary-size(offset), 0, _::binary>> ->
        {:ok, offset + 1, first || ""}

      <<_::binary-size(offset), length, label::binary-size(length), _::binary>>
      when length < 64 ->
        question_end(bytes, offset + 1 + length, first || label)

      _ ->
        :error
    end
  end
end
