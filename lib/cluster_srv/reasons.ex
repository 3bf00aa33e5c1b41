defmodule ClusterSRV.Reasons do
  @moduledoc false
  # What each failure and rejection reason means, in the words the logs and
  # `mix cluster_srv.check` use, so that both always say the same.
  #
  #     iex> ClusterSRV.Reasons.describe_failure(:servfail)
  #     "the server answered SERVFAIL"
  #
  #     iex> ClusterSRV.Reasons.describe_failure({:io, "connection refused"})
  #     "connection refused"
  #
  #     iex> ClusterSRV.Reasons.kind({:io, "malformed answer: label too long"})
  #     :io

  @doc """
  The kind of a failure: its reason without the details, so that a decoding error whose text
  changes from poll to poll is one kind.

      iex> ClusterSRV.Reasons.kind(:timeout)
      :timeout
  """
  @spec kind(term()) :: term()
  def kind(reason) when is_tuple(reason) and tuple_size(reason) > 0, do: elem(reason, 0)
  def kind(reason), do: reason

  @doc "A failed lookup's reason, in words."
  @spec describe_failure(term()) :: String.t()
  def describe_failure(:nxdomain), do: "the name does not exist (NXDOMAIN)"
  def describe_failure(:no_records), do: "the name has no records of the type asked"
  def describe_failure(:timeout), do: "no answer in time"
  def describe_failure(:servfail), do: "the server answered SERVFAIL"
  def describe_failure(:refused), do: "the server refused the query"

  def describe_failure(:answer_too_large) do
    "the answer does not fit in one DNS message (65,535 bytes): the service has outgrown one " <>
      "DNS answer. Split the pods into several services and ask each as a query of its own " <>
      "(query: [...]), or find them by the service's A records (dns_rr_types: [:a]), which name " <>
      "the nodes after their IPs and take about a quarter of the room per pod"
  end

  def describe_failure(:no_valid_names), do: "the answer held no valid node name"
  def describe_failure({:io, message}) when is_binary(message), do: message
  def describe_failure({:invalid_name, name}), do: "not a valid DNS name: #{inspect(name)}"

  def describe_failure({:unresolved, [{target, reason} | _] = targets}) do
    "the address of #{length(targets)} SRV target(s) could not be looked up (for example " <>
      "#{inspect(target)}: #{describe_failure(reason)})"
  end

  def describe_failure({:resolver_raised, message}),
    do: "the resolver function raised: #{message}"

  def describe_failure({:resolver_threw, value}),
    do: "the resolver function threw #{inspect(value)}"

  def describe_failure({:resolver_exited, reason}),
    do: "the resolver function exited: #{inspect(reason)}"

  def describe_failure({:resolver_crashed, reason}),
    do: "the resolver function's process died: #{inspect(reason)}"

  def describe_failure({:self_check_crashed, reason}),
    do: "its process died: #{inspect(reason)}"

  def describe_failure(other), do: inspect(other)

  @doc """
  Why a target was not made a node name, in words. `domain` is what targets must lie under and
  `max_nodes` the cap, as the config has them.

      iex> ClusterSRV.Reasons.describe_rejection(:outside_domain, domain: "svc.ns.svc.cluster.local")
      "not under the service's domain svc.ns.svc.cluster.local"
  """
  @spec describe_rejection(atom(), keyword()) :: String.t()
  def describe_rejection(reason, context \\ [])

  def describe_rejection(:invalid_hostname, _),
    do: "not a valid host name (letters, digits and hyphens; labels of 1 to 63 octets)"

  def describe_rejection(:too_long, _), do: "the host or node name is too long"

  def describe_rejection(:outside_domain, context),
    do: "not under the service's domain #{context[:domain]}"

  def describe_rejection(:service_itself, _),
    do: "the target is the service itself: is the service headless (clusterIP: None)?"

  def describe_rejection(:no_service, _), do: "the root target \".\" means no service"
  def describe_rejection(:no_address, _), do: "no address for node_naming: :ip"

  def describe_rejection(:unspecified_address, _),
    do: "an unspecified address (0.0.0.0 or ::) is no node's"

  def describe_rejection(:over_max_nodes, context),
    do: "more than max_nodes (#{context[:max_nodes]}) names in one answer"

  def describe_rejection(other, _), do: inspect(other)
end
