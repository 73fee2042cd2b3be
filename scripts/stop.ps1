# Stop what start.ps1 started. Windows has no SIGTERM for console processes: Stop-Process
# ends them at once, so messages in hand stay pending and another worker reclaims them
# after CLAIM_MIN_IDLE_MS (nothing is lost; the worker's own heartbeat expires first).
#   .\scripts\stop.ps1
$ErrorActionPreference = "Continue"
Set-Location (Join-Path $PSScriptRoot "..")
Get-ChildItem run\*.pid -ErrorAction SilentlyContinue | ForEach-Object {
    $processId = Get-Content $_.FullName
    $proc = Get-Process -Id $processId -ErrorAction SilentlyContinue
    if ($proc) { Stop-Process -Id $processId; Write-Output "stopped $($_.BaseName) (pid $processId)" }
    Remove-Item $_.FullName
}
