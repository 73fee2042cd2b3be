# Check what start.ps1 started: process alive, /health and /ready answering 200. Exit 1 if not.
#   .\scripts\health_check.ps1 [-ProducerPort 9090] [-BasePort 9100]
param([int]$ProducerPort = 9090, [int]$BasePort = 9100)
Set-Location (Join-Path $PSScriptRoot "..")
$failed = $false
function Test-Endpoint([int]$Port, [string]$Path) {
    try { return (Invoke-WebRequest -UseBasicParsing -TimeoutSec 5 "http://127.0.0.1:$Port$Path").StatusCode }
    catch { if ($_.Exception.Response) { return [int]$_.Exception.Response.StatusCode } else { return 0 } }
}
function Test-Component([string]$Name, [int]$Port) {
    $pidFile = "run\$Name.pid"
    if (-not (Test-Path $pidFile) -or -not (Get-Process -Id (Get-Content $pidFile) -ErrorAction SilentlyContinue)) {
        Write-Output "${Name}: NOT RUNNING"; $script:failed = $true; return
    }
    if ($Port -eq 0) { Write-Output "${Name}: running"; return }
    $live = Test-Endpoint $Port "/health"; $ready = Test-Endpoint $Port "/ready"
    Write-Output "${Name}: /health $live /ready $ready"
    if ($live -ne 200 -or $ready -ne 200) { $script:failed = $true }
}
Test-Component "producer" $ProducerPort
Get-ChildItem run\worker-*.pid -ErrorAction SilentlyContinue | ForEach-Object {
    $i = [int]($_.BaseName -replace "worker-", "")
    Test-Component $_.BaseName $(if ($BasePort -eq 0) { 0 } else { $BasePort + $i })
}
if ($failed) { exit 1 } else { exit 0 }
