defmodule ClusterSRV.Harness.Silent do
  @moduledoc """
  An endpoint that takes traffic and never answers.

  It listens on TCP (accepting connections and then never writing) and, with `udp: true`, on
  UDP at the same port (counting datagrams and never replying). As a DNS server it makes every
  query time out; as a pod listed in DNS it makes `:net_kernel.connect_node/1` hang until
  `net_setuptime` runs out, as a pod that is dead but still routable does.

      silent = ClusterSRV.Harness.Silent.start!(ip: {127, 0, 0, 1}, udp: true)
      ClusterSRV.Harness.Silent.datagrams(silent)  #=> 0

  With `netns:` (a namespace's file, `/var/run/netns/<name>`) its sockets live in that network
  namespace, so the test VM can play a dead pod inside a pod sandbox:

      ClusterSRV.Harness.Silent.start!(ip: {10, 244, 0, 200}, port: 4369,
        netns: "/var/run/netns/csrv-71234567-42-dead0")
  """
  use GenServer

  defstruct [:pid, :ip, :port]

  @type t :: %__MODULE__{pid: pid(), ip: :inet.ip_address(), port: :inet.port_number()}

  @doc """
  Starts listening. Options: `:ip` (default 127.0.0.1), `:port` (default: a free one), `:udp`,
  `:netns`.
  """
  def start!(opts \\ []) do
    {:ok, pid} = GenServer.start_link(__MODULE__, opts)
    GenServer.call(pid, :info)
  end

  @doc "Stops listening and closes every connection it accepted."
  def stop(%__MODULE__{pid: pid}) do
    GenServer.stop(pid)
  catch
    # Already stopped, or stopping with the process that started it.
    :exit, _ -> :ok
  end

  @doc "How many UDP datagrams arrived so far."
  def datagrams(%__MODULE__{pid: pid}), do: GenServer.call(pid, :datagrams)

  @doc """
  How many datagrams arrived, once at least `count` have or `timeout` ms passed. A datagram
  the kernel holds reaches this process a moment later, so a count read the instant a lookup
  returns may miss one that was sent.
  """
  def await_datagrams(silent, count, timeout \\ 1_000),
    do: await_datagrams(silent, count, System.monotonic_time(:millisecond) + timeout, :wait)

  defp await_datagrams(silent, count, deadline, :wait) do
    seen = datagrams(silent)

    if seen >= count or System.monotonic_time(:millisecond) >= deadline do
      seen
    else
      Process.sleep(10)
      await_datagrams(silent, count, deadline, :wait)
    end
  end

  @doc "How many TCP connections were accepted so far."
  def connections(%__MODULE__{pid: pid}), do: GenServer.call(pid, :connections)

  @doc "The address as a nameserver string."
  def nameserver(%__MODULE__{ip: ip, port: port}), do: "#{:inet.ntoa(ip)}:#{port}"

  @impl true
  def init(opts) do
    ip = Keyword.get(opts, :ip, {127, 0, 0, 1})
    # Sockets are made in the namespace given, as root may.
    netns = if path = opts[:netns], do: [netns: path], else: []

    {:ok, listen} =
      :gen_tcp.listen(
        Keyword.get(opts, :port, 0),
        [:binary, ip: ip, active: false, reuseaddr: true, backlog: 128] ++ netns
      )

    {:ok, port} = :inet.port(listen)

    udp =
      if Keyword.get(opts, :udp, false) do
        {:ok, socket} = :gen_udp.open(port, [:binary, ip: ip, active: true] ++ netns)
        socket
      end

    parent = self()
    acceptor = spawn_link(fn -> accept_loop(listen, parent) end)

    {:ok,
     %{
       ip: ip,
       port: port,
       listen: listen,
       udp: udp,
       acceptor: acceptor,
       datagrams: 0,
       sockets: []
     }}
  end

  @impl true
  def handle_call(:info, _from, state),
    do: {:reply, %__MODULE__{pid: self(), ip: state.ip, port: state.port}, state}

  def handle_call(:datagrams, _from, state), do: {:reply, state.datagrams, state}
  def handle_call(:connections, _from, state), do: {:reply, length(state.sockets), state}

  @impl true
  def handle_info({:udp, _socket, _ip, _port, _data}, state),
    do: {:noreply, %{state | datagrams: state.datagrams + 1}}

  def handle_info({:accepted, socket}, state),
    do: {:noreply, %{state | sockets: [socket | state.sockets]}}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    Enum.each(state.sockets, &:gen_tcp.close/1)
    :gen_tcp.close(state.listen)
    if state.udp, do: :gen_udp.close(state.udp)
    :ok
  end

  # Accepted sockets belong to the server so that they close with it; nobody ever reads them.
  defp accept_loop(listen, parent) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        :ok = :gen_tcp.controlling_process(socket, parent)
        send(parent, {:accepted, socket})
        accept_loop(listen, parent)

      {:error, _closed} ->
        :ok
    end
  end
end
