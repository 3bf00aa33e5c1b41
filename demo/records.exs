# Starts a local BIND with a CoreDNS-shaped zone and prints what ClusterSRV.Resolver reads from it.
alias ClusterSRV.Harness.{DNS, Zone}

service =
  Zone.service("myapp-headless", "default",
    pods: for(i <- 0..2, do: {"myapp-#{i}", {127, 0, 0, 10 + i}}),
    ports: [{"epmd", "tcp", 4370}]
  )

dns = DNS.start!(services: [service])
IO.puts("BIND is serving cluster.local on #{DNS.nameserver(dns)}\n")

{:ok, resolver} = ClusterSRV.Resolver.new(nameservers: [DNS.nameserver(dns)])

for name <- [
      Zone.service_name(service),
      Zone.port_name(service, "epmd"),
      "missing.default.svc.cluster.local."
    ] do
  IO.puts("SRV #{name}")

  case ClusterSRV.Resolver.lookup(resolver, name) do
    {:ok, records} ->
      for r <- records do
        addresses = Enum.map_join(r.addresses, ",", &to_string(:inet.ntoa(&1)))
        IO.puts("  #{r.priority} #{r.weight} #{r.port} #{r.target}  ttl=#{r.ttl}  [#{addresses}]")
      end

    {:error, reason} ->
      IO.puts("  error: #{inspect(reason)}")
  end
end

DNS.stop(dns)
