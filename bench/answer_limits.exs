# How many pods one DNS answer can list, per Kubernetes layout, as a real BIND (9.18 here)
# answers over TCP: past that, the answer does not fit in one message (65,535 bytes) and the
# resolver gives {:error, :answer_too_large}. Run with `mix run bench/answer_limits.exs`
# (about a minute and a half); it prints a table and asserts nothing.
#
# For each layout, a binary search over the number of pods: the service is rewritten in DNS
# with dynamic updates, as the endpoints controller would, and asked by the native resolver
# (with EDNS, as every lookup asks). The largest answer that fits is also asked with dig, for
# its size.

defmodule ClusterSRV.Bench.AnswerLimits do
  alias ClusterSRV.Harness.{DNS, Zone}
  alias ClusterSRV.Resolver

  @service "myapp-headless"
  @namespace "default"

  # What Kubernetes names a Deployment's pods: <deployment>-<pod-template-hash>-<5 characters>,
  # from an alphabet without vowels and look-alike digits.
  @alphabet ~c"bcdfghjklmnpqrstvwxz2456789"

  def run do
    layouts = [
      {"(a) StatefulSet, myapp-N targets, 1 port, at the service name", :srv,
       service(:statefulset, [{"epmd", "tcp", 4370}]), &Zone.service_name/1},
      # One port here: BIND cannot hold the service name's set of two records per pod for as
      # many pods, and the _discovery._tcp answer is the same either way.
      {"(b) Deployment, pod-name targets, at _discovery._tcp", :srv,
       service(:deployment, [{"discovery", "tcp", 4370}]), &Zone.port_name(&1, "discovery")},
      {"(b) Deployment, pod-name targets, 2 ports, at the service name", :srv,
       service(:deployment, [{"discovery", "tcp", 4370}, {"http", "tcp", 4000}]),
       &Zone.service_name/1},
      {"(c) dashed-IP targets, 10-244-N-M, 1 port, at the service name", :srv,
       service(:dashed_ip, [{"epmd", "tcp", 4370}]), &Zone.service_name/1},
      {"(d) A records of the service name (dns_cluster's form)", :a, :a_records,
       fn _ -> "#{@service}.#{@namespace}.svc.#{Zone.domain()}." end}
    ]

    IO.puts("BIND: #{bind_version()}\n")

    rows =
      for {label, type, layout, name_of} <- layouts do
        dns = DNS.start!()

        try do
          {:ok, resolver} =
            Resolver.new(nameservers: [DNS.nameserver(dns)], timeout: 5_000, attempts: 1)

          name = name_of.(layout_service(layout, 1))
          ask = fn count -> fits?(dns, resolver, layout, name, type, count) end
          largest = search(ask, 1, upper_bound(layout, name))
          {records, bytes} = answer_size(dns, layout, name, type, largest)
          IO.puts("#{label}: #{largest} pods (#{records} records, #{bytes} bytes)")
          {label, largest, records, bytes}
        after
          DNS.stop(dns)
        end
      end

    IO.puts("\n| Layout | Most pods in one answer | Records | Bytes |")
    IO.puts("|---|---:|---:|---:|")

    for {label, largest, records, bytes} <- rows,
        do: IO.puts("| #{label} | #{largest} | #{records} | #{bytes} |")
  end

  defp service(kind, ports), do: {kind, ports}

  # A count past the limit that BIND can still hold: an SRV set whose data passes 64 KB is
  # refused ("ran out of space", SERVFAIL to the update), and such a set cannot fit in one
  # message anyway, since each record of the answer takes 12 octets more than its data.
  defp upper_bound(:a_records, _name), do: 8_000

  defp upper_bound({_kind, ports} = layout, name) do
    records_per_pod = if String.starts_with?(name, "_"), do: 1, else: length(ports)
    [{_, _} = pod | _] = Enum.take(layout_service(layout, 1_000).pods, -1)
    target = Zone.target(layout_service(layout, 1), pod)
    data = 6 + byte_size(target) + 2
    div(div(65_000, data), length(ports)) |> min(div(65_000, data * records_per_pod))
  end

  # The layout's service with `count` pods (pod IPs 10.244.x.y, as a pod network gives them).
  defp layout_service(:a_records, count), do: layout_service({:dashed_ip, []}, count)

  defp layout_service({kind, ports}, count) do
    pods =
      for i <- 0..(count - 1),
          do: {pod_name(kind, i), {10, 244, div(i, 250), rem(i, 250) + 1}}

    target = if kind == :dashed_ip, do: :ip, else: :hostname
    Zone.service(@service, @namespace, pods: pods, ports: ports, target: target)
  end

  defp pod_name(:deployment, i), do: "myapp-5d8c7f9b6-" <> suffix(i)
  defp pod_name(_kind, i), do: "myapp-#{i}"

  defp suffix(i) do
    for position <- 4..0//-1, into: "" do
      <<Enum.at(@alphabet, rem(div(i, Integer.pow(27, position)), 27))>>
    end
  end

  # The largest count in lo..hi for which `fits?` holds, `lo` known to fit.
  defp search(fits?, lo, hi) when lo >= hi, do: if(fits?.(hi), do: hi, else: lo)

  defp search(fits?, lo, hi) do
    middle = div(lo + hi + 1, 2)
    if fits?.(middle), do: search(fits?, middle, hi), else: search(fits?, lo, middle - 1)
  end

  defp fits?(dns, resolver, layout, name, type, count) do
    put(dns, layout, count)

    case Resolver.lookup(resolver, name, type: type) do
      {:ok, found} when length(found) >= count ->
        true

      {:error, :answer_too_large} ->
        false

      other ->
        raise "#{count} pods at #{name}: #{inspect(other, limit: 3)}"
    end
  end

  # Only the A records for (d): the SRV sets of thousands of pods would not load at all.
  defp put(dns, :a_records, count) do
    name = "#{@service}.#{@namespace}.svc.#{Zone.domain()}."

    adds =
      for {_label, ip} <- layout_service(:a_records, count).pods,
          do: "update add #{name} 5 IN A #{:inet.ntoa(ip)}"

    DNS.update!(dns, ["update delete #{name} A" | adds])
  end

  defp put(dns, layout, count), do: DNS.put_service(dns, layout_service(layout, count))

  # The answer's record count and size as dig reads it over TCP, with EDNS and, as the resolver
  # asks, no cookie (a cookie takes room from the answer).
  defp answer_size(dns, layout, name, type, count) do
    put(dns, layout, count)
    qtype = type |> Atom.to_string() |> String.upcase()

    {output, 0} =
      System.cmd("dig", [
        "+tcp",
        "+nocookie",
        "-p",
        to_string(dns.port),
        "@127.0.0.1",
        name,
        qtype
      ])

    [_, records] = Regex.run(~r/ANSWER: (\d+),/, output)
    [_, bytes] = Regex.run(~r/MSG SIZE\s+rcvd: (\d+)/, output)
    {String.to_integer(records), String.to_integer(bytes)}
  end

  defp bind_version do
    {output, _} =
      System.cmd(System.find_executable("named") || "/usr/sbin/named", ["-v"],
        stderr_to_stdout: true
      )

    String.trim(output)
  end
end

ClusterSRV.Bench.AnswerLimits.run()
