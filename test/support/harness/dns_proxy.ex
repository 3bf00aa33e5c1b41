defmodule ClusterSRV.Harness.DNSProxy do
  @moduledoc """
  A DNS proxy that injects partial faults: it stands at the cluster DNS's service address, in
  the cluster network's namespace, over UDP and TCP, forwards every query to the real BIND
  behind it, and now and then, at random per query, answers otherwise than BIND did.

      proxy = ClusterSRV.Harness.DNSProxy.start!(netns: net.ns, ip: {10, 96, 0, 10},
                upstream: {{10, 96, 0, 11}, 53}, seed: 42, client_timeout: 1_000,
                faults: [drop: 0.05, strip_additional: 0.2])
      ClusterSRV.Harness.DNSProxy.outage(proxy, :aaaa, 3_000)   # every AAAA query fails for 3 s
      ClusterSRV.Harness.DNSProxy.pause_faults(proxy)           # BIND's answers, unchanged
      ClusterSRV.Harness.DNSProxy.counts(proxy)                 #=> %{drop: 12, strip_additional: 40}

  The faults, each a rate (the share of the queries it applies to) in `faults:`:

    * `:drop` - no answer at all;
    * `:delay` - BIND's answer, `client_timeout` + 300 ms late, past the client's try;
    * `:udp_truncate` - over UDP, the answer with TC set and only the first half of its
      answer records (the client must ask again over TCP);
    * `:tcp_truncate` - over TCP, NOERROR with TC set and no records, as BIND answers when an
      answer does not fit in one message;
    * `:strip_additional` - an SRV answer without its additional section (EDNS's OPT kept);
    * `:no_additional_a` - an SRV answer without the A records of its additional section;
    * `:servfail`, `:refused` - that response code, with no records;
    * `:nxdomain` - NXDOMAIN for a single sub-query: an A or AAAA query for a name that an SRV
      answer sent to the same client listed in the last 10 s, or one record type of a name
      another of whose types the same client was answered with records, unchanged, in the
      same poll. The proxy holds such an answer for 150 ms to see the other types' answers;
      when none came, the client gets BIND's answer.

  And `outage/4`: every query of one type fails (`:servfail`, or `:drop`) for a while.

  Each query's fault is drawn from a `:rand` state of its own client, name and type, seeded
  from `seed`: the n-th query of a name and type from a client gets the same draw in every run
  with that seed, so a seed replays the fault schedule however the queries interleave.

  Faults never make one name and type fail for long: a query whose client has had no
  unchanged answer to that name and type for `max_failing` ms (default 3,000) gets BIND's
  answer (a fault drawn for it is not counted). So no source of a strategy fails continuously
  for longer than that, plus a poll, whatever the rates.

  Every injected fault is counted by kind (`counts/1`) and kept with its time, client, name
  and type (`injected/2`), to explain what a pod saw.
  """
  use GenServer

  alias ClusterSRV.Harness.{DNSMessage, Netns}

  defstruct [:pid, :ip, :port]

  @type t :: %__MODULE__{pid: pid(), ip: :inet.ip4_address(), port: :inet.port_number()}

  # The order of the bands a draw falls in: a query's applicable kinds, each as wide as its rate.
  @kinds [
    :drop,
    :delay,
    :udp_truncate,
    :tcp_truncate,
    :strip_additional,
    :no_additional_a,
    :servfail,
    :refused,
    :nxdomain
  ]

  # How long an SRV answer's targets stay eligible for an NXDOMAIN to their address queries.
  @target_window 10_000
  # How long an NXDOMAIN candidate is held to see its name's other types answered.
  @sibling_wait 150
  # How far back a sibling's answer counts as the same poll's: polls are at least an interval
  # (1 s in the chaos run) apart, and one poll's queries leave within milliseconds.
  @sibling_window 500
  # How long BIND may take to answer a forwarded query before the proxy gives up on it.
  @upstream_timeout 2_000

  @doc "The fault kinds a rate can be given for, in the order their bands are laid out."
  def kinds, do: @kinds

  @doc """
  Starts the proxy, listening at `ip`:`port` (default 53) over UDP and TCP inside the namespace
  `netns`. Options: `:upstream` (`{ip, port}` of the real server, reached in the same
  namespace), `:seed`, `:faults` (rates by kind, default none), `:client_timeout` (ms, for
  `:delay`), `:max_failing` (ms).
  """
  def start!(opts) do
    {:ok, pid} = GenServer.start_link(__MODULE__, opts)
    GenServer.call(pid, :info)
  end

  @doc "Stops the proxy and closes its sockets."
  def stop(%__MODULE__{pid: pid}) do
    GenServer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  @doc "Replaces the fault rates."
  def set_faults(%__MODULE__{pid: pid}, rates), do: GenServer.call(pid, {:set_faults, rates})

  @doc "Stops injecting faults (outages included): every answer is BIND's, until `resume_faults/1`."
  def pause_faults(%__MODULE__{pid: pid}), do: GenServer.call(pid, {:paused, true})

  @doc "Injects faults again after `pause_faults/1`."
  def resume_faults(%__MODULE__{pid: pid}), do: GenServer.call(pid, {:paused, false})

  @doc """
  Makes every query of `type` (`:a`, `:aaaa` or `:srv`) fail for `ms`: answered SERVFAIL
  (`:servfail`, the default) or not at all (`:drop`). Counted as `:type_outage`, per query.
  """
  def outage(%__MODULE__{pid: pid}, type, ms, how \\ :servfail) when how in [:servfail, :drop],
    do: GenServer.call(pid, {:outage, type, ms, how})

  @doc """
  Every query the proxy got, `{at_ms, :udp | :tcp}` oldest first, and the bytes it sent back,
  since it started or `reset_traffic/1`: for counting what a client costs the DNS.
  """
  def traffic(%__MODULE__{pid: pid}), do: GenServer.call(pid, :traffic)

  @doc "Forgets the traffic counted so far."
  def reset_traffic(%__MODULE__{pid: pid}), do: GenServer.call(pid, :reset_traffic)

  @doc "`:refuse` closes every TCP connection as soon as it is accepted; `:serve` ends that."
  def tcp(%__MODULE__{pid: pid}, how) when how in [:refuse, :serve],
    do: GenServer.call(pid, {:tcp, how})

  @doc "How many faults were injected so far, by kind."
  def counts(%__MODULE__{pid: pid}), do: GenServer.call(pid, :counts)

  @doc """
  The faults injected at or after `since` (monotonic ms), oldest first: maps of `at`,
  `client` (its address), `name`, `type`, `transport` and `kind`.
  """
  def injected(%__MODULE__{pid: pid}, since \\ nil),
    do: GenServer.call(pid, {:injected, since}, 30_000)

  # -- The process ------------------------------------------------------------------------------

  @impl true
  def init(opts) do
    # In a namespace for the namespace cluster, or on loopback for a test VM's own lookups.
    netns =
      case Keyword.get(opts, :netns) do
        nil -> []
        ns -> [netns: Netns.path(ns)]
      end

    ip = Keyword.fetch!(opts, :ip)
    port = Keyword.get(opts, :port, 53)

    {:ok, listen} =
      :gen_tcp.listen(
        port,
        [:binary, ip: ip, packet: 2, active: false, reuseaddr: true, backlog: 128] ++ netns
      )

    {:ok, udp} = :gen_udp.open(port, [:binary, ip: ip, active: true] ++ netns)
    proxy = self()
    acceptor = spawn_link(fn -> accept_loop(listen, proxy) end)
    rates = Keyword.get(opts, :faults, [])
    check_rates!(rates)

    {:ok,
     %{
       ip: ip,
       port: port,
       netns: netns,
       listen: listen,
       udp: udp,
       acceptor: acceptor,
       upstream: Keyword.fetch!(opts, :upstream),
       seed: Keyword.get(opts, :seed, 0),
       rates: rates,
       client_timeout: Keyword.get(opts, :client_timeout, 2_000),
       max_failing: Keyword.get(opts, :max_failing, 3_000),
       paused: false,
       streams: %{},
       last_clean: %{},
       answered: %{},
       targets: %{},
       outages: %{},
       counts: %{},
       injected: [],
       tcp: :serve,
       traffic: [],
       bytes: 0
     }}
  end

  defp check_rates!(rates) do
    for {kind, rate} <- rates do
      unless kind in @kinds and is_number(rate) and rate >= 0,
        do: raise(ArgumentError, "bad fault rate #{inspect({kind, rate})}")
    end

    # The widest sets of bands one query can have: every kind but the other transport's
    # truncation.
    for other <- [:tcp_truncate, :udp_truncate],
        rates |> Keyword.delete(other) |> Keyword.values() |> Enum.sum() > 1 do
      raise ArgumentError, "the fault rates of a query add up to more than 1"
    end
  end

  @impl true
  def handle_call(:info, _from, state),
    do: {:reply, %__MODULE__{pid: self(), ip: state.ip, port: state.port}, state}

  def handle_call({:set_faults, rates}, _from, state) do
    check_rates!(rates)
    {:reply, :ok, %{state | rates: rates}}
  end

  def handle_call({:paused, paused}, _from, state), do: {:reply, :ok, %{state | paused: paused}}

  def handle_call({:outage, type, ms, how}, _from, state),
    do: {:reply, :ok, put_in(state.outages[type], {now() + ms, how})}

  def handle_call(:counts, _from, state), do: {:reply, state.counts, state}

  def handle_call(:traffic, _from, state),
    do: {:reply, %{queries: Enum.reverse(state.traffic), bytes: state.bytes}, state}

  def handle_call(:reset_traffic, _from, state),
    do: {:reply, :ok, %{state | traffic: [], bytes: 0}}

  def handle_call({:tcp, how}, _from, state), do: {:reply, :ok, %{state | tcp: how}}

  def handle_call(:tcp?, _from, state), do: {:reply, state.tcp, state}

  def handle_call({:injected, since}, _from, state) do
    all = Enum.reverse(state.injected)
    {:reply, if(since, do: Enum.filter(all, &(&1.at >= since)), else: all), state}
  end

  # A TCP connection's query: the fault to apply, decided here as for UDP.
  def handle_call({:decide, client, query}, _from, state) do
    {decision, state} = decide(state, client, :tcp, query)
    {:reply, {decision, plan(state)}, state}
  end

  # Whether `client` got an unchanged answer with records to another type of `name` since `since`.
  def handle_call({:sibling_answered?, client, name, type, since}, _from, state) do
    answered =
      state.answered
      |> Map.get({client, name}, [])
      |> Enum.any?(fn {at, other} -> other != type and at >= since end)

    {:reply, answered, state}
  end

  @impl true
  def handle_info({:udp, socket, client_ip, client_port, bytes}, %{udp: socket} = state) do
    case DNSMessage.parse(bytes) do
      {:ok, query} ->
        {decision, state} = decide(state, client_ip, :udp, query)
        plan = plan(state)

        spawn(fn ->
          case answer(plan, decision, client_ip, :udp, query, bytes) do
            {:send, reply} ->
              :gen_udp.send(socket, client_ip, client_port, reply)
              send(plan.proxy, {:bytes, byte_size(reply)})

            :none ->
              :ok
          end
        end)

        {:noreply, state}

      :error ->
        {:noreply, state}
    end
  end

  def handle_info({:clean, client, query, answer, at}, state) do
    key = {client, query.qname, query.qtype}
    state = put_in(state.last_clean[key], at)

    state =
      if DNSMessage.rcode(answer) == :noerror and
           Enum.any?(answer.answers, &(&1.type == query.qtype)) do
        recent = [{at, query.qtype} | Map.get(state.answered, {client, query.qname}, [])]
        put_in(state.answered[{client, query.qname}], Enum.take(recent, 6))
      else
        state
      end

    {:noreply, listed_targets(state, client, answer, at)}
  end

  # A changed SRV answer still lists targets, whose address queries may follow.
  def handle_info({:sent, client, answer, at}, state),
    do: {:noreply, listed_targets(state, client, answer, at)}

  def handle_info({:bytes, count}, state), do: {:noreply, %{state | bytes: state.bytes + count}}

  def handle_info({:injected, entry}, state) do
    {:noreply,
     %{
       state
       | counts: Map.update(state.counts, entry.kind, 1, &(&1 + 1)),
         injected: [entry | state.injected]
     }}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # The TCP connections' processes are linked to the acceptor, and go with it.
    Process.unlink(state.acceptor)
    Process.exit(state.acceptor, :kill)
    :gen_tcp.close(state.listen)
    :gen_udp.close(state.udp)
    :ok
  end

  defp listed_targets(state, client, answer, at) do
    targets =
      for rr <- answer.answers,
          rr.type == :srv,
          target = DNSMessage.srv_target(answer, rr),
          target != nil,
          into: state.targets,
          do: {{client, target}, at}

    %{state | targets: targets}
  end

  # What the workers need of the state, so that they never call back for it.
  defp plan(state) do
    %{
      proxy: self(),
      upstream: state.upstream,
      netns: state.netns,
      client_timeout: state.client_timeout,
      targets: state.targets
    }
  end

  # -- Deciding a query's fault -----------------------------------------------------------------

  # Every query draws from its stream, faults or not, so that a stream's n-th draw is always its
  # n-th query's, whatever the pauses, outages and spared queries around it.
  defp decide(state, client, transport, query) do
    key = {client, query.qname, query.qtype}
    at = now()
    state = %{state | traffic: [{at, transport} | state.traffic]}

    stream =
      Map.get_lazy(state.streams, key, fn ->
        :rand.seed_s(:exsss, {state.seed, :erlang.phash2(key), 0x5EED})
      end)

    {draw, stream} = :rand.uniform_s(stream)
    last_clean = Map.get(state.last_clean, key, at)

    state = %{
      state
      | streams: Map.put(state.streams, key, stream),
        last_clean: Map.put(state.last_clean, key, last_clean)
    }

    decision =
      cond do
        state.paused -> :none
        at - last_clean > state.max_failing -> :none
        outage = outage_now(state, query.qtype, at) -> {:type_outage, outage}
        true -> pick(state.rates, draw, transport, query.qtype)
      end

    {decision, state}
  end

  defp outage_now(state, type, at) do
    case state.outages[type] do
      {until, how} when at < until -> how
      _ -> nil
    end
  end

  defp pick(rates, draw, transport, qtype) do
    @kinds
    |> Enum.filter(&applies?(&1, transport, qtype))
    |> Enum.reduce_while(0.0, fn kind, below ->
      top = below + Keyword.get(rates, kind, 0)
      if draw < top, do: {:halt, {:fault, kind}}, else: {:cont, top}
    end)
    |> case do
      {:fault, kind} -> kind
      _ -> :none
    end
  end

  defp applies?(:udp_truncate, transport, _qtype), do: transport == :udp
  defp applies?(:tcp_truncate, transport, _qtype), do: transport == :tcp

  defp applies?(kind, _transport, qtype) when kind in [:strip_additional, :no_additional_a],
    do: qtype == :srv

  defp applies?(:nxdomain, _transport, qtype), do: qtype in [:a, :aaaa, :srv]
  defp applies?(_kind, _transport, _qtype), do: true

  # -- Answering (in a process of its own per query) --------------------------------------------

  # `{:send, bytes}` for the client, or `:none`; reports what it did to the proxy.
  defp answer(plan, decision, client, transport, query, bytes) do
    arrived = now()

    case decision do
      :drop ->
        injected(plan, :drop, client, transport, query, arrived)
        :none

      {:type_outage, :drop} ->
        injected(plan, :type_outage, client, transport, query, arrived)
        :none

      decision ->
        case forward(plan, transport, bytes) do
          {:ok, reply} -> respond(plan, decision, client, transport, query, reply, arrived)
          # BIND is down or lost it: the client hears what it would hear from BIND, nothing.
          :error -> :none
        end
    end
  end

  defp respond(plan, decision, client, transport, query, reply, arrived) do
    case DNSMessage.parse(reply) do
      {:ok, answer} ->
        case change(plan, decision, client, query, answer, arrived) do
          nil ->
            send(plan.proxy, {:clean, client, query, answer, now()})
            {:send, reply}

          {kind, changed, delay} ->
            injected(plan, kind, client, transport, query, arrived)
            if changed.answers != [], do: send(plan.proxy, {:sent, client, changed, now()})
            if delay > 0, do: Process.sleep(delay)
            {:send, DNSMessage.encode(changed)}
        end

      # Not a message the proxy can read: passed on as it came.
      :error ->
        {:send, reply}
    end
  end

  # The changed answer `{kind, message, delay_ms}`, or nil to send BIND's unchanged.
  defp change(plan, decision, client, query, answer, arrived) do
    case decision do
      :none ->
        nil

      :delay ->
        {:delay, answer, plan.client_timeout + 300}

      :udp_truncate ->
        kept = Enum.take(answer.answers, div(length(answer.answers), 2))

        {:udp_truncate,
         %{
           DNSMessage.with_rcode(answer, DNSMessage.rcode(answer), truncated: true)
           | answers: kept,
             authority: [],
             additional: []
         }, 0}

      :tcp_truncate ->
        {:tcp_truncate, empty(DNSMessage.with_rcode(answer, :noerror, truncated: true)), 0}

      :strip_additional ->
        kept = Enum.filter(answer.additional, &(&1.type == :opt))

        if length(kept) < length(answer.additional),
          do: {:strip_additional, %{answer | additional: kept}, 0}

      :no_additional_a ->
        kept = Enum.reject(answer.additional, &(&1.type == :a))

        if length(kept) < length(answer.additional),
          do: {:no_additional_a, %{answer | additional: kept}, 0}

      rcode when rcode in [:servfail, :refused] ->
        {rcode, empty(DNSMessage.with_rcode(answer, rcode)), 0}

      {:type_outage, :servfail} ->
        {:type_outage, empty(DNSMessage.with_rcode(answer, :servfail)), 0}

      :nxdomain ->
        if nxdomain_allowed?(plan, client, query, arrived),
          do: {:nxdomain, empty(DNSMessage.with_rcode(answer, :nxdomain)), 0}
    end
  end

  defp empty(message), do: %{message | answers: [], authority: [], additional: []}

  # An address query for a target an SRV answer listed, or a type of a name whose other types
  # were answered with records in the same poll: a client can tell either from the truth.
  defp nxdomain_allowed?(plan, client, query, arrived) do
    target_listed? =
      query.qtype in [:a, :aaaa] and
        case plan.targets[{client, query.qname}] do
          nil -> false
          at -> arrived - at <= @target_window
        end

    target_listed? or
      (
        Process.sleep(max(arrived + @sibling_wait - now(), 0))

        GenServer.call(
          plan.proxy,
          {:sibling_answered?, client, query.qname, query.qtype, arrived - @sibling_window}
        )
      )
  end

  defp injected(plan, kind, client, transport, query, at) do
    entry = %{
      at: at,
      client: client,
      name: query.qname,
      type: query.qtype,
      transport: transport,
      kind: kind
    }

    send(plan.proxy, {:injected, entry})
  end

  defp forward(plan, :udp, bytes) do
    {ip, port} = plan.upstream

    case :gen_udp.open(0, [:binary, active: false] ++ plan.netns) do
      {:ok, socket} ->
        try do
          :ok = :gen_udp.send(socket, ip, port, bytes)
          receive_reply(socket, bytes, now() + @upstream_timeout)
        after
          :gen_udp.close(socket)
        end

      {:error, _} ->
        :error
    end
  end

  defp forward(plan, :tcp, bytes) do
    {ip, port} = plan.upstream

    case :gen_tcp.connect(ip, port, [:binary, packet: 2, active: false] ++ plan.netns, 1_000) do
      {:ok, socket} ->
        try do
          with :ok <- :gen_tcp.send(socket, bytes),
               {:ok, reply} <- :gen_tcp.recv(socket, 0, @upstream_timeout) do
            {:ok, reply}
          else
            _ -> :error
          end
        after
          :gen_tcp.close(socket)
        end

      {:error, _} ->
        :error
    end
  end

  # BIND's reply to this query (its ID), within the deadline.
  defp receive_reply(socket, <<id::16, _::binary>> = bytes, deadline) do
    case :gen_udp.recv(socket, 0, max(deadline - now(), 0)) do
      {:ok, {_, _, <<^id::16, _::binary>> = reply}} -> {:ok, reply}
      {:ok, _other} -> receive_reply(socket, bytes, deadline)
      {:error, _} -> :error
    end
  end

  # -- TCP --------------------------------------------------------------------------------------

  defp accept_loop(listen, proxy) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        # A proxy told to refuse TCP closes each connection at once, as a server that stopped
        # serving TCP would fail it.
        if GenServer.call(proxy, :tcp?) == :refuse do
          :gen_tcp.close(socket)
        else
          pid = spawn_link(fn -> serve_tcp(socket, proxy) end)
          :ok = :gen_tcp.controlling_process(socket, pid)
          send(pid, :go)
        end

        accept_loop(listen, proxy)

      {:error, _closed} ->
        :ok
    end
  end

  # One connection, query after query, until the client closes it or idles 10 s.
  defp serve_tcp(socket, proxy) do
    receive do
      :go -> :ok
    end

    case :inet.peername(socket) do
      {:ok, {client, _port}} -> serve_tcp_queries(socket, proxy, client)
      {:error, _} -> :gen_tcp.close(socket)
    end
  end

  defp serve_tcp_queries(socket, proxy, client) do
    with {:ok, bytes} <- :gen_tcp.recv(socket, 0, 10_000),
         {:ok, query} <- DNSMessage.parse(bytes),
         {decision, plan} <- GenServer.call(proxy, {:decide, client, query}) do
      case answer(plan, decision, client, :tcp, query, bytes) do
        {:send, reply} ->
          :gen_tcp.send(socket, reply)
          send(proxy, {:bytes, byte_size(reply)})

        # A dropped query over TCP: the connection stays open and silent, as a stuck server's.
        :none ->
          :ok
      end

      serve_tcp_queries(socket, proxy, client)
    else
      _ -> :gen_tcp.close(socket)
    end
  catch
    :exit, _ -> :gen_tcp.close(socket)
  end

  defp now, do: System.monotonic_time(:millisecond)
end
