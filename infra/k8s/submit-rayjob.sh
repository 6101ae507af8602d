#!/bin/sh
# Runs in the flow-run pod of the visionflow-k8s-ray work pool (infra/k8s/prefect-rayjob-job-template.json):
# submits infra/k8s/rayjob-imagenet.yaml as this flow run's own RayJob and waits for it to end.
#
# The flow run itself executes on the Ray head, as the job's driver: the entrypoint becomes
# `prefect flow-run execute <id>`, which runs the deployment's flow (`train` with launcher=ray) and
# reports its states and logs to the Prefect API as any flow run does. This pod only carries the
# run's lifetime: it exits 0 when the Ray job succeeded and 1 otherwise (the worker then marks a
# run that did not finish as crashed), and the RayJob names this pod's Job as its owner, so
# cancelling the flow run (the worker deletes the Job) deletes the Ray cluster too.
#
# Needs: sh, sed, kubectl, and the environment the template sets (PREFECT__FLOW_RUN_ID and
# PREFECT_API_URL from the worker; VISIONFLOW_IMAGE, NAMESPACE, JOB_NAME, JOB_UID, RAYJOB_FILE).
set -eu

: "${VISIONFLOW_IMAGE:?set the work pool's image job variable}"
: "${PREFECT__FLOW_RUN_ID:?not started by a Prefect worker}"
: "${PREFECT_API_URL:?the worker passes its PREFECT_API_URL}"
RAYJOB_FILE=${RAYJOB_FILE:-/etc/visionflow/rayjob.yaml}
POLL_SECONDS=${POLL_SECONDS:-30}

name="vf-${PREFECT__FLOW_RUN_ID}"   # 39 characters: KubeRay allows 47 for a RayJob
entrypoint="PREFECT_API_URL='${PREFECT_API_URL}' prefect flow-run execute ${PREFECT__FLOW_RUN_ID}"
patch=$(printf '{"metadata": {"name": "%s", "namespace": "%s", "labels": {"prefect.io/flow-run-id": "%s"},
  "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "%s", "uid": "%s"}]},
  "spec": {"entrypoint": "%s"}}' \
  "$name" "$NAMESPACE" "$PREFECT__FLOW_RUN_ID" "$JOB_NAME" "$JOB_UID" "$entrypoint")

sed "s|\${VISIONFLOW_IMAGE}|${VISIONFLOW_IMAGE}|g" "$RAYJOB_FILE" |
  kubectl patch --local -f - --type merge -p "$patch" -o yaml |
  kubectl -n "$NAMESPACE" apply -f -
echo "submitted RayJob $name; the flow run executes on its head"

unreadable=0
while :; do
  if state=$(kubectl -n "$NAMESPACE" get rayjob "$name" -o jsonpath='{.status.jobDeploymentStatus}/{.status.jobStatus}'); then
    unreadable=0
  else
    unreadable=$((unreadable + 1))   # the API server may be briefly away; a deleted RayJob is gone for good
    [ "$unreadable" -lt 10 ] || { echo "RayJob $name cannot be read any more"; exit 1; }
    state=
  fi
  case "$state" in
    Complete/*|Failed/*) break ;;
  esac
  sleep "$POLL_SECONDS"
done
echo "RayJob $name: $state"
[ "$state" = Complete/SUCCEEDED ]
